#!/bin/sh
# Stream A of run_c2.sh as restarted at 00:34 UTC (allocation fine-tuning only at 90 % for CPU time; the TSCNC
# 99 % arms moved to stream B). Usage (worktree root): sh reports/subnet/run_c2_a.sh
PY=${PYTHON:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=src
for s in 0 1 2; do "$PY" reports/subnet/allocation_experiment.py --seeds $s; done
"$PY" reports/subnet/tscnc_experiment.py --seeds 2 --sparsity 0.9 --cond 0 0.1
"$PY" reports/subnet/tscnc_experiment.py --seeds 0 1 2 --sparsity 0.9 --cond 0.01
"$PY" reports/subnet/tscnc_experiment.py --seeds 0 1 2 --sparsity 0.95 --cond 0 0.1
echo "stream A2 done $(date -u +%H:%M:%S)"
