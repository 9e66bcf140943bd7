#!/usr/bin/env bash
# The checks only a CUDA GPU can run, as one prepared script (about 5 minutes on one GPU; budget 8). It runs from
# the working tree (PYTHONPATH=.), the project not installed, on a machine that has torch, sentencepiece, sacrebleu,
# pyyaml, filelock and pytest; the sweep layer (Ray, Optuna, W&B, pandas) is optional:
#   1) tests/test_gpu.py: every tensor on the GPU, bf16 autocast, exact resume on the same device; and the
#      importance masks on a CUDA model (tests/test_prune.py); two trials sharing one GPU (resources.gpus: 0.5)
#      only where Ray is installed, else that test skips and says why
#   2) the quickstart sweep at its real size on the GPU, 4 trials on half a GPU each: only where Ray is installed
#   3) bench/throughput.py on the GPU (bf16), gated model against torch.nn.Transformer, with MFU
#   4) decoding speed of a pruned model against the unpruned one on the GPU (bench/pruned_speed.py): random weights,
#      and real checkpoints where PRUNED_BASE (the base model) and PRUNED_MODELS (pruned or gated checkpoints,
#      space-separated) name them, with $HEADSWEEP_DATA holding their corpus
# Usage (from the repository root):  bash bench/gpu_check.sh [OUT_DIR]
# A dry run on a machine without a GPU: GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh (the CUDA tests skip, the
# benchmarks run small on the CPU).
# Everything it prints also goes to OUT_DIR/gpu_check.log (default: $OUT, else results/gpu_check); docs/gpu.md
# keeps a run's output.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$out"
log="$out/gpu_check.log"
python="${PYTHON:-python}"
device="${GPU_CHECK_DEVICE:-cuda}"
small=()
[ "$device" = cpu ] && small=(--d-model 64 --layers 1 --ff 128 --max-tokens 512 --steps 2)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline HEADSWEEP_CACHE="${HEADSWEEP_CACHE:-$out/cache}"
status=0
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
  "$python" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  sweep_layer=yes
  "$python" -c "import ray, optuna, pandas; print('ray', ray.__version__, 'optuna', optuna.__version__)" 2>/dev/null \
    || { sweep_layer=no; echo "the sweep layer (ray, optuna, pandas) is not installed: its checks are skipped"; }
  echo "== 1) CUDA tests"
  start=$(date +%s)
  # -o addopts=: no pytest-xdist needed (the project's addopts run two processes)
  timeout 300 "$python" -m pytest -q -rs -p no:cacheprovider -o addopts= tests/test_gpu.py \
    "tests/test_prune.py::test_importance_of_a_model_on_the_gpu_equals_the_cpu_scores" || status=1
  echo "tests took $(( $(date +%s) - start )) s"
  echo "== 2) the quickstart sweep on the GPU: its base model on one GPU, 4 trials on half a GPU each"
  if [ "$sweep_layer" = yes ]; then
    start=$(date +%s)
    timeout 300 "$python" trainable.py sweeps/quickstart.yaml --local --results "$out/sweeps" --set name=gpu-quickstart \
      --set search.num_samples=4 --set resources.gpus=0.5 --set pretrain.resources.gpus=1 \
      2>&1 | grep -E "rror|trials:|base model|Pareto|^ *[0-9.]+ +[0-9]+ |took|GPU" | grep -v "^.(pid" || status=1
    echo "sweep took $(( $(date +%s) - start )) s"
  else
    echo "skipped: needs Ray, Optuna and pandas (not installed here)"
  fi
  echo "== 3) throughput and MFU on the GPU"
  timeout 180 "$python" bench/throughput.py --device "$device" --rounds 3 "${small[@]}" || status=1
  echo "== 4) decoding speed of pruned models on the GPU"
  if [ "$device" = cpu ]; then
    timeout 120 "$python" bench/pruned_speed.py --device cpu --rounds 1 --layers 1 --src-len 32 --batch 2 \
      --beam-sentences 1 || status=1
  else
    timeout 120 "$python" bench/pruned_speed.py --device cuda --rounds 5 || status=1
  fi
  if [ -n "${PRUNED_BASE:-}" ]; then
    # shellcheck disable=SC2086  # a list of paths
    timeout 300 "$python" bench/pruned_speed.py --device "$device" --base "$PRUNED_BASE" --models $PRUNED_MODELS \
      --rounds 3 || status=1
  else
    echo "real checkpoints: none given (PRUNED_BASE, PRUNED_MODELS)"
  fi
  echo "== exit status $status"
  exit $status
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
