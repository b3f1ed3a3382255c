#!/usr/bin/env bash
# Issue 19's prepared GPU check: one script that prints, for one CUDA device,
#   1. the explanation cost per image of the default map (medxgan_ig) and the baselines at 64, 128 and 256 px, one
#      image per call and in batches, with ratios to IG-50 at the same size and batch (scripts/benchmark_explain.py);
#   2. classifier and medXGAN training throughput with and without mixed precision (scripts/benchmark_training.py).
# The tables go to stdout and to $OUT (the device tool's folder) or outputs/gpu_check.
#
# The lent machines have PyTorch but not MONAI, Captum, Ignite, nibabel or pydicom, and cannot download: fetch their
# wheels here first (pure Python), then carry .whl and run this script there:
#   echo /.whl/ >> .git/info/exclude && bash scripts/gpu_check.sh --download-wheels
#   device run (carry .whl): bash scripts/gpu_check.sh
# DEVICE=cpu SIZES=64 BATCHES="1 2" IMAGES=2 ITERATIONS=2 bash scripts/gpu_check.sh: small tables on the CPU (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(monai==1.6.1 captum==0.9.0 pytorch-ignite==0.5.5 nibabel==5.4.2 pydicom==3.0.2)
PYTHON=${PYTHON:-python3}
if [[ "${1:-}" == "--download-wheels" ]]; then
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
read -r -a SIZES <<< "${SIZES:-64 128 256}"
read -r -a BATCHES <<< "${BATCHES:-1 64}"
IMAGES=${IMAGES:-64}
RESULTS=${OUT:-outputs/gpu_check}
mkdir -p "$RESULTS"
"$PYTHON" - "$DEVICE" <<'PY' | tee "$RESULTS/device.txt"
import sys, torch
device = sys.argv[1]
if device.startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device visible"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
else:
    print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
PY
"$PYTHON" scripts/benchmark_explain.py --device "$DEVICE" --sizes "${SIZES[@]}" --batch-sizes "${BATCHES[@]}" \
    --images "$IMAGES" \
    --methods ig medxgan_ig gradient gradcam occlusion | tee "$RESULTS/explain.md"
"$PYTHON" scripts/benchmark_training.py --device "$DEVICE" --iterations "${ITERATIONS:-20}" | tee "$RESULTS/training.md"
