#!/usr/bin/env bash
# The main job on the shipped demo data: set up ./.venv, build the demo benchmark (data/demo, deterministic,
# skipped when present) and evaluate the shipped classifier (bundle/models/model.pt) on its test split.
# Results land in outputs/classifier/eval_<run>/ and in the MLflow database outputs/classifier/mlruns.db.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f data/demo/datalist.json ]; then
  .venv/bin/python scripts/make_demo_data.py data/demo
fi
.venv/bin/python -m monai.bundle run \
  --config_file "['bundle/configs/train_classifier.json','bundle/configs/evaluate_classifier.json']" "$@"
latest=$(ls -td outputs/classifier/eval_* | head -1)
echo "== results in $latest"
cat "$latest/metrics.csv"
cat "$latest/confusion_matrix.csv"
