#!/usr/bin/env bash
# Creates ./.venv with the CPU build of torch and medxgan-monai (editable, with the dev extra).
# Usage: bash scripts/setup.sh            (idempotent: re-running only installs what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]" "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -c "import torch, monai; print('torch', torch.__version__, '| monai', monai.__version__)"
