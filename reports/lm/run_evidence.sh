#!/usr/bin/env bash
# The commands behind reports/lm sections 8-12 (small-scale proxies; one thread per run, two runs at a time).
# Run from the repository root: bash reports/lm/run_evidence.sh
set -euo pipefail
export PYTHONPATH=src OMP_NUM_THREADS=1
PY=${PYTHON:-python}

# Sections 9-10: SSA and sequence-length warm-up (equal steps) on the dense proxy, 3 paired seeds
$PY -m regimen study --base lm/proxy --methods ssa seq_length_warmup --seeds 3 --workers 2 --threads 1 \
    --title "lm/proxy: SSA and sequence-length warm-up at equal steps" --out reports/lm/studies/proxy

# Sections 8-11: MoE coef 0 vs 0.01, SSA with locality, warm-up at equal tokens, verse batching at equal target tokens
# (token_budget, not run for the report: add --arms token_budget)
$PY reports/lm/lm_evidence.py run --seeds 3 --workers 2
$PY reports/lm/lm_evidence.py collect

# Section 12: muP LR transfer, SP (lm/default) and muP (lm/mup, base width 64) at widths 32, 64, 128 (256: too slow today)
COMMON=(--set model.options.depth=2 --set data.options.seq_len=64 --set train.batch_size=16 --set train.epochs=1
        --set train.max_steps_per_epoch=150 --set schedule.warmup_epochs=0.1
        --set data.val_fraction=0.005 --set data.test_subset=50 --set train.threads=1)
LRS=1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2,6.4e-2
mkdir -p reports/lm/mup_transfer
for W in ${WIDTHS:-32 64 128}; do
  $PY -m regimen sweep --recipe lm/default --lr "$LRS" "${COMMON[@]}" --set model.options.dim=$W \
      --out reports/lm/mup_transfer/sp_w$W.json &
  $PY -m regimen sweep --recipe lm/mup --lr "$LRS" "${COMMON[@]}" --set model.options.dim=$W \
      --out reports/lm/mup_transfer/mup_w$W.json
  wait
done
$PY reports/lm/mup_transfer.py reports/lm/mup_transfer
