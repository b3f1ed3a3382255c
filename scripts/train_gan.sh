#!/usr/bin/env bash
# Reproduce the shipped medXGAN weights (bundle/models/generator.pt, encoder.pt, counterfactual_encoder.pt) on the
# demo data, in three runs of
# bundle/configs/train_gan.json (about 80 minutes on 2 CPU cores) and the counterfactual encoder:
#   1. 60 epochs of GAN training with the paper's classifier weight (lambda 2), no encoder: outputs/gan;
#   2. from that checkpoint, 15 epochs with lambda 6 (raises positive counterfactual validity from ~0.8 to ~0.93),
#      then 20 epochs of encoder training against the frozen generator: outputs/gan_finetune;
#   3. 20 more encoder epochs against the same frozen generator with the counterfactual term (the anatomy code of a
#      real positive must give a negative G(z_a, 0)): outputs/gan_encoder;
#   4. the counterfactual encoder for that generator and encoder (train_counterfactual_encoder.json, 56 epochs, about
#      40 minutes more): outputs/counterfactual_encoder.
# Extra arguments go to every run (e.g. --device cuda). Copy the results with COPY_TO_BUNDLE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f data/demo/datalist.json ]; then
  .venv/bin/python scripts/make_demo_data.py data/demo
fi
configs="['bundle/configs/train_classifier.json','bundle/configs/train_gan.json']"
.venv/bin/python -m monai.bundle run --config_file "$configs" --output_dir outputs/gan \
  --train#trainer#max_epochs 60 --train#trainer#encoder_start_epoch 61 --train#trainer#gan_stop_epoch 61 "$@"
.venv/bin/python -m monai.bundle run --config_file "$configs" --output_dir outputs/gan_finetune \
  --init_ckpt "outputs/gan/models/gan_checkpoint_epoch=60.pt" --train#trainer#lambda_classifier 6.0 \
  --train#trainer#max_epochs 35 --train#trainer#gan_stop_epoch 16 --train#trainer#encoder_start_epoch 16 "$@"
.venv/bin/python -m monai.bundle run --config_file "$configs" --output_dir outputs/gan_encoder \
  --init_ckpt "outputs/gan_finetune/models/gan_checkpoint_epoch=35.pt" --train#trainer#lambda_classifier 6.0 \
  --train#trainer#lambda_counterfactual 1.0 --train#trainer#max_epochs 20 --train#trainer#gan_stop_epoch 1 \
  --train#trainer#encoder_start_epoch 1 "$@"
.venv/bin/python -m monai.bundle run \
  --config_file "['bundle/configs/train_classifier.json','bundle/configs/train_gan.json','bundle/configs/train_counterfactual_encoder.json']" \
  --generator_ckpt outputs/gan_encoder/models/generator.pt --encoder_ckpt outputs/gan_encoder/models/encoder.pt \
  --output_dir outputs/counterfactual_encoder "$@"
if [ "${COPY_TO_BUNDLE:-0}" = "1" ]; then
  cp outputs/gan_encoder/models/generator.pt outputs/gan_encoder/models/encoder.pt bundle/models/
  cp outputs/counterfactual_encoder/models/counterfactual_encoder.pt bundle/models/
fi
