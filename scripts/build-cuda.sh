#!/usr/bin/env bash
# Build anymal with candle's CUDA backend on a machine without the CUDA toolkit or a GPU, to
# carry the binary to one that has the NVIDIA driver (the device machines have no Rust).
#
#   scripts/build-cuda.sh [COMPUTE_CAP]      # default 90 (H100 / H200)
#
# - nvcc and the CUDA libraries come from NVIDIA's PyPI wheels (CUDA 12's nvcc wheels hold only
#   ptxas; CUDA 13's hold nvcc; candle 0.11's cudarc 0.19.10 accepts toolkits up to 13.4).
# - The driver library libcuda.so is in no wheel. cudarc links it by name, so the link uses a
#   stub with the same soname (libcuda.so.1) exporting the symbols the binary references; at
#   run time the real driver library is loaded in its place.
# - Video is left out (--no-default-features): the GPU machines have no FFmpeg libraries.
# Output: target-cuda/release/anymal. Run it there with the wheels' lib/ on LD_LIBRARY_PATH
# (cudart, cublas, curand, nvrtc), e.g. by carrying that folder too.
set -euo pipefail
cd "$(dirname "$0")/.."
CAP="${1:-90}"
VENV="${CUDA_WHEELS_VENV:-$PWD/target-cuda/wheels}"
if [ ! -x "$VENV/bin/pip" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "nvidia-cuda-nvcc==13.4.*" "nvidia-cuda-runtime==13.4.*" \
  "nvidia-cuda-crt==13.4.*" "nvidia-nvvm==13.4.*" nvidia-cuda-cccl "nvidia-cuda-nvrtc==13.4.*" \
  nvidia-curand nvidia-cublas
CU="$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/cu13 | head -1)"

# Unversioned names for the linker, and the driver stub (empty until the symbols are known).
STUB="$PWD/target-cuda/link"
mkdir -p "$STUB"
for l in cudart cublas cublasLt curand nvrtc; do
  ln -sf "$(ls "$CU"/lib/lib$l.so.* | head -1)" "$STUB/lib$l.so"
done
[ -f "$STUB/libcuda.so" ] || { : > "$STUB/stub.c"; cc -shared -fPIC -o "$STUB/libcuda.so" "$STUB/stub.c" -Wl,-soname,libcuda.so.1; }

build() {
  PATH="$CU/bin:$PATH" CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_COMPUTE_CAP="$CAP" \
    RUSTFLAGS="-L $STUB -C link-arg=-Wl,--error-limit=0" \
    cargo build --release --features cuda --no-default-features --bin anymal --target-dir target-cuda
}

if ! build 2> "$STUB/build.log"; then
  # The driver symbols the link could not find become the stub's (empty) functions.
  grep -oE "undefined symbol: cu[A-Za-z0-9_]*" "$STUB/build.log" | awk '{print $3}' | sort -u > "$STUB/syms.txt"
  if [ ! -s "$STUB/syms.txt" ]; then
    tail -30 "$STUB/build.log" >&2
    echo "build-cuda: the build failed for a reason other than missing driver symbols" >&2
    exit 1
  fi
  sed 's/.*/void &(void) {}/' "$STUB/syms.txt" > "$STUB/stub.c"
  cc -shared -fPIC -o "$STUB/libcuda.so" "$STUB/stub.c" -Wl,-soname,libcuda.so.1
  build
fi
echo "built target-cuda/release/anymal (CUDA, compute capability $CAP); libraries: $CU/lib"
