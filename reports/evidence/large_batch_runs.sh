#!/usr/bin/env bash
# The large-batch evidence: the study (lr_scaling, ghost_bn, regime_adaptation on the batch-1024 base), the base's
# budget curve (the same recipe at half and twice the epochs, seed 0) and the small-batch reference (the same recipe
# at batch 256, the study's seeds). One thread per run, one run at a time. From the repository root:
#
#   bash reports/evidence/large_batch_runs.sh            # then: python reports/evidence/index.py
#
# Finished runs are kept (the study resumes; a curve or reference run with a summary.json is skipped).
set -euo pipefail
export OMP_NUM_THREADS=1 PYTHONPATH=src
PY=${PYTHON:-/work/main/.venv/bin/python}
OUT=reports/evidence/large_batch_curve
EPOCHS=$(sed -n 's/^epochs = //p' src/regimen/recipes/evidence/large_batch.toml)
SEEDS=$(sed -n 's/^seeds = //p' reports/evidence/large_batch.toml)

train() {  # train NAME ARGS...: one run into $OUT/NAME unless it finished before
  local name=$1; shift
  [ -f "$OUT/$name/summary.json" ] && return 0
  "$PY" -m regimen train --recipe evidence/large_batch --out "$OUT/$name" --overwrite --quiet \
    --set train.threads=1 "$@"
}

"$PY" -m regimen study reports/evidence/large_batch.toml --out reports/evidence/large_batch --workers 1 --threads 1
for seed in $(seq 0 $((SEEDS - 1))); do
  train "b256-e${EPOCHS}-seed${seed}" --set seed="$seed" --set train.batch_size=256
done
train "b1024-e$((EPOCHS / 2))-seed0" --set train.epochs=$((EPOCHS / 2))
train "b1024-e$((EPOCHS * 2))-seed0" --set train.epochs=$((EPOCHS * 2))
"$PY" -m regimen report reports/evidence/large_batch
