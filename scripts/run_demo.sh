#!/usr/bin/env bash
# The main job on the shipped demo data: set up ./.venv, build the demo benchmark (data/demo, deterministic,
# skipped when present), evaluate the shipped classifier on the test split, then explain test images with every
# method (inference.json) using the shipped classifier, generator and encoder.
# DEMO_IMAGES sets how many test images are explained (default 50; "all" for the whole split of 500).
# Results: outputs/classifier/eval_<run>/ and outputs/inference/inference_<run>/, tracked in the MLflow databases
# outputs/classifier/mlruns.db and outputs/inference/mlruns.db.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f data/demo/datalist.json ]; then
  .venv/bin/python scripts/make_demo_data.py data/demo
fi
.venv/bin/python -m monai.bundle run \
  --config_file "['bundle/configs/train_classifier.json','bundle/configs/evaluate_classifier.json']"
latest=$(ls -td outputs/classifier/eval_* | head -1)
echo "== classifier test metrics ($latest)"
cat "$latest/metrics.csv"
cat "$latest/confusion_matrix.csv"

limit=${DEMO_IMAGES:-50}
[ "$limit" = "all" ] && limit=None
.venv/bin/python -m monai.bundle run --config_file bundle/configs/inference.json --max_items "$limit" "$@"
latest=$(ls -td outputs/inference/inference_* | head -1)
echo "== explanations in $latest ($(ls "$latest" | wc -l) files); first predictions:"
head -6 "$latest/predictions.csv"
