#!/bin/sh
# The second, one-seed comparison of reports/composer/README.md (same budget as run_report.sh): the methods built
# after the first bench.
set -e
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/composer_runs/bench_more}
PYTHONPATH=src python -m regimen bench --quiet --repeats 1 --out "$OUT" --title "Composer parity, more methods, one seed" \
  --recipes baseline batch/squeeze_excite batch/layer_freezing batch/agc augment/colout augment/progressive_resizing \
            augment/augmix dropout/gyro_dropout dropout/drop_path_block \
  --set data.train_subset=8192 --set data.val_fraction=0.0 --set train.epochs=3 --set train.batch_size=128 \
  --set train.threads=1 --set 'model.options.widths=[8, 16, 32]' --set 'model.options.depths=[1, 1, 1]'
