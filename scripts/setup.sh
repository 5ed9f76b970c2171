#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with op4ksr and the extras named in $1
# (default: none). torch is pinned to the CPU build first so that nothing pulls a CUDA build;
# on a GPU machine install your CUDA torch first and this step leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
if [ -n "$extras" ]; then
  python -m pip install -q -e ".[${extras}]"
else
  python -m pip install -q -e .
fi
