#!/bin/sh
# Stream A as finally run (machine load 30+ on 2 cores from 00:35 UTC): allocation seed 0 at 50/70/90 % (run_c2_a.sh),
# then seeds 1 and 2 at 90 % only, then the third TSCNC seed at 90 %. Usage (worktree root): sh reports/subnet/run_c2_a3.sh
PY=${PYTHON:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=src
while [ ! -e reports/subnet/results_allocation/dp__sparsity0.9__seed0.json ]; do sleep 10; done
for s in 1 2; do "$PY" reports/subnet/allocation_experiment.py --seeds $s --sparsities 0.9; done
"$PY" reports/subnet/tscnc_experiment.py --seeds 2 --sparsity 0.9 --cond 0 0.1
echo "stream A3 done $(date -u +%H:%M:%S)"
