#!/usr/bin/env bash
# Samplers compared by complete sweeps: TPE, NSGA-II and random search, SEEDS seeds each, the same trials per sweep
# (sweeps/sampler_study.yaml), then hypervolume against trials with 95% intervals over seeds.
#   bash bench/sampler_study.sh [SEEDS] [RESULTS]        # default 3 seeds, results/
# A stopped study continues where it stopped: finished sweeps are skipped, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
results=${2:-results}
source bench/sweep_series.sh
folders=()
for sampler in tpe nsga2 random; do
  for seed in $(seq 0 $((seeds - 1))); do
    name="sampler_study-$sampler-$seed"
    folders+=("$results/$name")
    run_sweep "$results" "$name" sweeps/sampler_study.yaml --set "search.sampler=$sampler" --set "search.seed=$seed"
  done
done
"$python" -m analysis.sampler_study --sweeps "${folders[@]}" --out "$results/sampler_study"
