#!/bin/sh
# The Composer-parity comparison of reports/composer/README.md: each new method against the same baseline, one small
# budget (8192 Fashion-MNIST training images, 3 epochs, ResNet widths [8, 16, 32], 1 thread), seeds 0 and 1.
set -e
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/composer_runs/bench}
PYTHONPATH=src python -m regimen bench --quiet --repeats 2 --out "$OUT" --title "Composer parity, small CPU budget" \
  --recipes baseline batch/sam batch/asam batch/swa batch/selective_backprop batch/blurpool augment/cutout \
            batch/sam_msd_zloss \
  --set data.train_subset=8192 --set data.val_fraction=0.0 --set train.epochs=3 --set train.batch_size=128 \
  --set train.threads=1 --set 'model.options.widths=[8, 16, 32]' --set 'model.options.depths=[1, 1, 1]'
