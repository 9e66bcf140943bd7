# Sourced by the benchmarks that run series of complete sweeps (bench/sampler_study.sh, bench/early_stop.sh).
# run_sweep RESULTS NAME SWEEP.yaml [--set k=v ...]: one sweep into RESULTS/NAME, its output in RESULTS/NAME.log;
# a finished one (finished.json written: every trial ended; or kept as a record: python -m sweeps.record) is
# skipped, an interrupted one resumed; stops the calling script on failure. $PYTHON: the interpreter (default
# .venv/bin/python).
python=${PYTHON:-.venv/bin/python}

run_sweep() {
  local results=$1 name=$2
  shift 2
  # finished: every trial ended (finished.json), or kept as a record; an interrupted sweep has a report too
  if [ -f "$results/$name/finished.json" ] || [ -f "$results/$name/record.json" ]; then
    echo "== $name: finished, skipped"
    return 0
  fi
  local resume=()
  mkdir -p "$results"
  [ -d "$results/$name" ] && resume=(--resume)
  echo "== $name"
  local start
  start=$(date +%s)
  "$python" trainable.py "$@" --results "$results" --set "name=$name" --set wandb.mode=disabled "${resume[@]}" \
    > "$results/$name.log" 2>&1 || { echo "$name failed: see $results/$name.log"; exit 1; }
  echo "   $(( $(date +%s) - start )) s"
}
