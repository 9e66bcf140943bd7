#!/usr/bin/env bash
# Does multi-objective early stopping pay, and do constraints find the answer sooner? Complete sweeps of the
# synthetic pair (sweeps/sampler_study.yaml with longer trials: 180 steps, an evaluation every 20), SEEDS seeds each
# (TPE, 20 trials per sweep): without early stopping, with MO-ASHA (rungs at 20 and 60 steps, a third kept; its rungs
# rank the head count by l0, and for comparison by the count itself: mo_asha_open_heads), and with the constraint
# "BLEU within 0.5 of the base model"; then the hypervolume against trial-steps with 95%
# intervals, the trials each needed to find the fewest-heads feasible point, and the ratios
# (analysis/early_stop.py):
#   bash bench/early_stop.sh [SEEDS] [RESULTS]        # default 5 seeds, results/
# A stopped study continues where it stopped: finished sweeps are skipped, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5}
results=${2:-results}
source bench/sweep_series.sh
folders=()
for kind in none mo_asha mo_asha_open_heads constrained; do
  for seed in $(seq 0 $((seeds - 1))); do
    name="early_stop-$kind-$seed"
    folders+=("$results/$name")
    if [ "$kind" = constrained ]; then
      how=(--set "constraints=[{metric: bleu, min_relative_to_base: -0.5}]")
    elif [ "$kind" = mo_asha_open_heads ]; then
      how=(--set "search.scheduler={kind: mo_asha, grace_steps: 20, reduction_factor: 3, heads_at_rungs: open_heads}")
    else
      how=(--set "search.scheduler={kind: $kind, grace_steps: 20, reduction_factor: 3}")
    fi
    run_sweep "$results" "$name" sweeps/sampler_study.yaml --set search.sampler=tpe --set "search.seed=$seed" \
      --set search.num_samples=20 --set prune.set.train.max_steps=180 --set prune.set.train.eval_every=20 "${how[@]}"
  done
done
"$python" -m analysis.early_stop --sweeps "${folders[@]}" --out "$results/early_stop"
