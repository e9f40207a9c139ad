#!/bin/sh
# Runs part B's entries through compare.py's `one` command (one fresh process per run; existing JSONs are skipped).
# compare.py `run` would also re-render README.md, which prune-a owns.
# usage (worktree root): OMP_NUM_THREADS=1 PYTHONPATH=src [SEEDS="0 1 2"] [KEEPS="0.5 0.25"] [ENTRIES=...] sh reports/subnet/run_entries_b.sh
PY=${PYTHON:-/work/main/.venv/bin/python}
for seed in ${SEEDS:-0 1 2}; do
  for keep in ${KEEPS:-0.5 0.25}; do
    for entry in ${ENTRIES:-lottery_jackpots ftwt layer_dp tscnc}; do
      out="reports/subnet/results/${entry}__keep${keep}__seed${seed}.json"
      if [ -e "$out" ]; then echo "skip $out"; continue; fi
      echo "run $entry keep=$keep seed=$seed"
      OMP_NUM_THREADS=1 "$PY" reports/subnet/compare.py one "$entry" "$keep" "$seed" || echo "FAILED $entry $keep $seed"
    done
  done
done
