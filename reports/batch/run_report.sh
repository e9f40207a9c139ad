#!/usr/bin/env bash
# Reproduces the batch pillar's method report (reports/batch/README.md). Small budgets: a shared 2-core CPU.
# Usage: reports/batch/run_report.sh [OUT_ROOT]   (default /tmp/batch_runs); results.md/json + PNG land in
# OUT_ROOT/<study>/ and were copied to reports/batch/<study>/.
# train.threads=1: on the shared machine two torch threads per run were ~10x slower (oversubscribed cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/batch_runs}
COMMON=(--set data.train_subset=8192 --set data.val_fraction=0 --set "model.options.widths=[8, 16, 32]"
        --set train.epochs=1 --set train.threads=1)

# 1. Large-batch gap: batch 128 vs 1024, then + lr_scaling, + ghost_bn, + regime_adaptation (cumulative).
.venv/bin/regimen bench --recipes recipes/batch/small_batch.toml recipes/batch/large_batch.toml \
  recipes/batch/large_batch_lr_scaling.toml recipes/batch/large_batch_ghost_bn.toml \
  recipes/batch/large_batch_regime.toml --out "$OUT/large_batch" --repeats 3 "${COMMON[@]}"

# 2. Weight standardization at batch 2 (1500 steps = 3000 images, lr 0.01) and batch 128 (one epoch of 8192).
WS=(recipes/batch/ws_reference.toml recipes/batch/weight_std.toml recipes/batch/weight_std_bcn.toml)
.venv/bin/regimen bench --recipes "${WS[@]}" --out "$OUT/ws_b2" --repeats 3 "${COMMON[@]}" \
  --set train.batch_size=2 --set train.max_steps_per_epoch=1500 --set optim.lr=0.01
.venv/bin/regimen bench --recipes "${WS[@]}" --out "$OUT/ws_b128" --repeats 3 "${COMMON[@]}"

# 3. Controls (2 seeds): Ghost BN without LR scaling; lr_scaling + regime adaptation without Ghost BN.
.venv/bin/regimen bench --recipes recipes/batch/large_batch_ghost_only.toml recipes/batch/large_batch_regime_only.toml \
  --out "$OUT/large_batch_controls" --repeats 2 "${COMMON[@]}"

# 4. Large-batch optimizers at batch 1024, 8 epochs (64 steps), 2 seeds: SGD + lr_scaling vs LARS vs LAMB, and
#    batch 128 at the same 8 epochs (512 steps) for reference; then LAMB at lr 0.04 (the recipe's 0.01 undertrains).
.venv/bin/regimen bench --recipes recipes/batch/small_batch.toml recipes/batch/large_batch_lr_scaling.toml \
  recipes/batch/lars.toml recipes/batch/lamb.toml --out "$OUT/large_batch_optim" --repeats 2 "${COMMON[@]}" \
  --set train.epochs=8
.venv/bin/regimen bench --recipes recipes/batch/lamb.toml --out "$OUT/large_batch_lamb_lr04" --repeats 2 \
  "${COMMON[@]}" --set train.epochs=8 --set optim.lr=0.04

# 5. high_loss_batches (δ = 0.5, first epoch full), 3 seeds: at equal epochs (3: 128 steps vs 192) and at equal
#    steps (5 epochs: 64 + 4 × 32 = 192 steps, like 3 epochs of batch 128); then equal steps scored in train mode.
.venv/bin/regimen bench --recipes recipes/batch/small_batch.toml recipes/batch/high_loss_batches.toml \
  --out "$OUT/high_loss" --repeats 3 "${COMMON[@]}" --set train.epochs=3
.venv/bin/regimen bench --recipes recipes/batch/high_loss_batches.toml --out "$OUT/high_loss_equal_steps" \
  --repeats 3 "${COMMON[@]}" --set train.epochs=5
.venv/bin/regimen bench --recipes recipes/batch/high_loss_batches.toml --out "$OUT/high_loss_equal_steps_trainmode" \
  --repeats 3 "${COMMON[@]}" --set train.epochs=5 --set methods.0.eval_mode=false

# 6. adaptive_batch (starts at 32, at most x2 per epoch, cap 1024) vs fixed batch 128 and fixed 32, 4 epochs, 2 seeds.
.venv/bin/regimen bench --recipes recipes/batch/small_batch.toml recipes/batch/small_batch_32.toml \
  recipes/batch/adaptive_batch.toml --out "$OUT/adaptive_batch" --repeats 2 "${COMMON[@]}" --set train.epochs=4
