#!/usr/bin/env bash
# Samplers compared by complete sweeps: TPE, NSGA-II and random search, SEEDS seeds each, the same trials per sweep
# (sweeps/sampler_study.yaml), then hypervolume against trials with 95% intervals over seeds.
#   bash bench/sampler_study.sh [SEEDS] [RESULTS]        # default 3 seeds, results/
# A stopped study continues where it stopped: finished sweeps are skipped, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
results=${2:-results}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$results"
folders=()
for sampler in tpe nsga2 random; do
  for seed in $(seq 0 $((seeds - 1))); do
    name="sampler_study-$sampler-$seed"
    folders+=("$results/$name")
    if [ -f "$results/$name/report/report.html" ]; then
      echo "== $name: finished, skipped"
      continue
    fi
    resume=()
    [ -d "$results/$name" ] && resume=(--resume)
    echo "== $name"
    start=$(date +%s)
    "$python" trainable.py sweeps/sampler_study.yaml --results "$results" --set "search.sampler=$sampler" \
      --set "search.seed=$seed" --set "name=$name" --set wandb.mode=disabled "${resume[@]}" > "$results/$name.log" 2>&1 \
      || { echo "$name failed: see $results/$name.log"; exit 1; }
    echo "   $(( $(date +%s) - start )) s"
  done
done
"$python" -m analysis.sampler_study --sweeps "${folders[@]}" --out "$results/sampler_study"
