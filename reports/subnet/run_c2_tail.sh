#!/bin/sh
# The last TSCNC arms, started when streams A3 and B end: λ_c = 0.01 at 90 % (after A3), then 95 % with and without
# the penalty (after B). Usage (worktree root): sh reports/subnet/run_c2_tail.sh X <pid of A3>  /  Y <pid of B>
PY=${PYTHON:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=src
while kill -0 "$2" 2>/dev/null; do sleep 10; done
case "$1" in
  X) "$PY" reports/subnet/tscnc_experiment.py --seeds 0 1 2 --sparsity 0.9 --cond 0.01 ;;
  Y) "$PY" reports/subnet/tscnc_experiment.py --seeds 0 1 2 --sparsity 0.95 --cond 0 0.1 ;;
esac
echo "tail $1 done $(date -u +%H:%M:%S)"
