#!/bin/sh
# Part C2 runs (issue 17's remaining evidence): two streams, one process per run, OMP_NUM_THREADS=1, existing
# result files skipped. Usage (worktree root): sh reports/subnet/run_c2.sh A   and   sh reports/subnet/run_c2.sh B
# (in two shells or in the background). Stream A trains the dense models of seeds 0 and 2, stream B seed 1; every
# other run waits until its seed's dense model is cached (runs/subnet_compare/dense_seed<seed>.pt).
PY=${PYTHON:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=src
CACHE=${REGIMEN_PRUNE_CACHE:-runs/subnet_compare}

dense() {  # train (or load) the dense model of seed $1
  "$PY" -c "import sys; sys.path.insert(0, 'reports/subnet'); from setting import build_setting; build_setting($1, 0.5)"
}
wait_dense() { while [ ! -e "$CACHE/dense_seed$1.pt" ]; do sleep 10; done; }
entry() {  # entry keep seed
  wait_dense "$3"
  out="reports/subnet/results/$1__keep$2__seed$3.json"
  if [ -e "$out" ]; then echo "skip $out"; return; fi
  echo "run $1 keep=$2 seed=$3 $(date -u +%H:%M:%S)"
  "$PY" reports/subnet/compare.py one "$1" "$2" "$3" || echo "FAILED $1 $2 $3"
}
alloc() { wait_dense "$1"; "$PY" reports/subnet/allocation_experiment.py --seeds "$1" ${ALLOC_ARGS:-}; }
tscnc() {  # seed sparsity conds...
  seed=$1; sparsity=$2; shift 2
  wait_dense "$seed"
  "$PY" reports/subnet/tscnc_experiment.py --seeds "$seed" --sparsity "$sparsity" --cond "$@"
}

case "$1" in
  A)
    dense 0; dense 2
    alloc 0; alloc 1; alloc 2
    tscnc 2 0.9 0 0.1
    for s in 0 1 2; do tscnc $s 0.9 0.01; done
    for s in 0 1 2; do tscnc $s 0.95 0 0.1; done
    ;;
  B)
    dense 1
    for s in 0 1 2; do entry polarization_strong 0.25 $s; done
    for s in 0 1 2; do for k in 0.5 0.25; do entry lottery_rewind $k $s; done; done
    for s in 0 1 2; do tscnc $s 0.99 0 0.1; done
    ;;
esac
echo "stream $1 done $(date -u +%H:%M:%S)"
