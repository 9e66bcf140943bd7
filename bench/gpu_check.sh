#!/usr/bin/env bash
# The checks only a CUDA GPU can run, as one prepared script (about 5 minutes on one GPU; budget 8):
#   1) tests/test_gpu.py: every tensor on the GPU, bf16 autocast, exact resume on the same device, two trials
#      sharing one GPU (resources.gpus: 0.5); and the importance masks on a CUDA model (tests/test_prune.py)
#   2) the quickstart sweep at its real size on the GPU, 4 trials on half a GPU each (two at once)
#   3) bench/throughput.py on the GPU (bf16), gated model against torch.nn.Transformer
# Usage (from the repository root, the project installed):  bash bench/gpu_check.sh [OUT_DIR]
# Everything it prints also goes to OUT_DIR/gpu_check.log (default: $OUT, else results/gpu_check); docs/gpu.md
# keeps a run's output.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$out"
log="$out/gpu_check.log"
python="${PYTHON:-python}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline HEADSWEEP_CACHE="${HEADSWEEP_CACHE:-$out/cache}"
status=0
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
  "$python" -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'ray', ray.__version__)"
  echo "== 1) CUDA tests"
  start=$(date +%s)
  timeout 300 "$python" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py \
    "tests/test_prune.py::test_importance_of_a_model_on_the_gpu_equals_the_cpu_scores" || status=1
  echo "tests took $(( $(date +%s) - start )) s"
  echo "== 2) the quickstart sweep on the GPU: its base model on one GPU, 4 trials on half a GPU each"
  start=$(date +%s)
  timeout 300 "$python" trainable.py sweeps/quickstart.yaml --local --results "$out/sweeps" --set name=gpu-quickstart \
    --set search.num_samples=4 --set resources.gpus=0.5 --set pretrain.resources.gpus=1 \
    2>&1 | grep -E "rror|trials:|base model|Pareto|^ *[0-9.]+ +[0-9]+ |took|GPU" | grep -v "^.(pid" || status=1
  echo "sweep took $(( $(date +%s) - start )) s"
  echo "== 3) throughput on the GPU"
  timeout 180 "$python" bench/throughput.py --device cuda --rounds 3 || status=1
  echo "== exit status $status"
  exit $status
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
