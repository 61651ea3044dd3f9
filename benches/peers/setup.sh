#!/usr/bin/env bash
# Create the Python environment for the peer benchmarks (PyTorch + transformers + peft for
# the alignment step, llama-cpp-python for generation) and install what is missing.
#
#   benches/peers/setup.sh                      # venv at benches/peers/.venv
#   PEERS_VENV=/path/to/venv benches/peers/setup.sh
#
# Idempotent: a package that already imports is not reinstalled, and an existing venv that
# has everything is left untouched. $PYTHON picks the interpreter that creates the venv
# (default python3, 3.9 or newer).
#
# llama-cpp-python has no CPU wheel on PyPI for most platforms: pip builds it from source
# (CMake + a C/C++ compiler), which takes several minutes. The build uses llama.cpp's
# defaults, including -march=native, so it is tuned to this machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating venv $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi
py="$venv/bin/python"

# import name -> pip package
declare -A pkgs=(
    [torch]=torch
    [transformers]=transformers
    [gguf]=gguf
    [peft]=peft
    [llama_cpp]=llama-cpp-python
)

missing=()
for mod in torch transformers gguf peft llama_cpp; do
    if ! "$py" -c "import $mod" >/dev/null 2>&1; then
        missing+=("${pkgs[$mod]}")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: $venv has torch, transformers, gguf, peft and llama_cpp; nothing to do" >&2
    exit 0
fi

echo "setup: installing ${missing[*]} into $venv" >&2
case " ${missing[*]} " in
*" llama-cpp-python "*)
    echo "setup: llama-cpp-python is built from source: this takes several minutes" >&2
    ;;
esac
# Plain PyPI: its Linux torch wheel runs on CPU (the CUDA libraries it pulls in go unused).
"$py" -m pip install "${missing[@]}" >&2

"$py" - <<'EOF' >&2
import torch, transformers, gguf, peft, llama_cpp
print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, llama-cpp-python {llama_cpp.__version__}")
EOF
