"""What only a CUDA GPU can show: every tensor of a run on the trial's device, bf16 autocast, exact resume with the
CUDA RNG state on the same device, and two trials sharing one GPU (``resources.gpus: 0.5``). Each test skips on a
machine without CUDA; ``bench/gpu_check.sh`` runs them on a GPU machine (docs/gpu.md keeps its output)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from model import metrics as M
from model.train import Trainer, train
from tests.helpers import QUIET, check_table, interrupt_then_resume, run_cli, state_of, tiny_config, write_sweep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

GATED = ("gates.mode=learned", "gates.penalty=0.05", "gates.attention=[enc_self, dec_self, dec_cross]",
         "train.device=cuda", "train.max_steps=8", "train.eval_every=3")


def test_every_tensor_of_a_cuda_run_lives_on_the_gpu(tmp_path: Path):
    """Parameters, buffers, gate parameters and optimizer state after training steps on CUDA, and the run's
    evaluation, all on the GPU (a tensor left on the CPU fails the step or silently slows it)."""
    trainer = Trainer(tiny_config(*GATED), tmp_path, **QUIET)
    trainer.run()
    tensors = {f"param {n}": p for n, p in trainer.model.named_parameters()}
    tensors.update({f"buffer {n}": b for n, b in trainer.model.named_buffers()})
    for i, state in enumerate(trainer.optimizer.state.values()):
        tensors.update({f"optimizer {i} {k}": v for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0})
    assert tensors and len([n for n in tensors if n.startswith("optimizer")]) > 0
    elsewhere = [n for n, t in tensors.items() if t.device.type != "cuda"]
    assert not elsewhere, elsewhere
    assert trainer.step == 8


def test_bf16_autocast_trains_to_finite_losses_and_fp32_weights(tmp_path: Path):
    result = train(tiny_config(*GATED, "train.precision=bf16"), tmp_path, **QUIET)
    assert result.status == "completed" and result.step == 8
    assert torch.isfinite(torch.tensor(result.metrics[M.LOSS]))
    weights = state_of(result.checkpoint)
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())  # autocast, not casts


def test_a_cuda_run_resumes_exactly_on_the_same_device(tmp_path: Path):
    """Killed after the step-3 checkpoint on the GPU and resumed there: bitwise the unbroken run (dropout and gate
    noise draw from the CUDA generator, whose state the checkpoint carries)."""
    cfg = tiny_config(*GATED)
    full = train(cfg, tmp_path / "full", **QUIET)
    resumed = interrupt_then_resume(cfg, tmp_path / "broken", lambda m: m[M.STEP] == 3)
    a, b = state_of(full.checkpoint), state_of(resumed.checkpoint)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert resumed.metrics[M.BLEU] == full.metrics[M.BLEU] and resumed.metrics[M.LOSS] == full.metrics[M.LOSS]


@pytest.mark.slow
def test_two_trials_share_one_gpu(tmp_path: Path, record):
    """resources.gpus: 0.5 and two concurrent trials on a one-GPU machine: both run on it at the same time."""
    pytest.importorskip("ray", reason="the sweep layer (Ray, Optuna, pandas) is not installed on this machine; the "
                                      "model-level checks above run without it")
    import pandas as pd

    sweep = write_sweep(tmp_path / "s.yaml", search={"num_samples": 2, "max_concurrent": 2, "seed": 0},
                        prune={"set": {"gates.mode": "learned", "train.max_steps": 200, "train.eval_every": 100}},
                        resources={"cpus": 1, "gpus": 0.5}, pretrain={"set": {"train.max_steps": 6,
                                                                              "train.eval_every": 3},
                                                                      "resources": {"cpus": 1, "gpus": 0.5}})
    start = time.time()
    proc = run_cli(str(sweep), "--results", str(tmp_path), "--local")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_table(tmp_path / "t", trials=2)
    spans = []
    for trial in (tmp_path / "t").glob("prune_trainable_*"):
        progress = pd.read_csv(trial / "progress.csv")
        spans.append((progress["timestamp"].min() - progress["time_this_iter_s"].iloc[0], progress["timestamp"].max()))
    (a0, a1), (b0, b1) = spans
    overlap = min(a1, b1) - max(a0, b0)
    assert overlap > 0, spans
    record("two trials with resources.gpus: 0.5 on one GPU", trials=len(spans), overlap_s=round(overlap, 1),
           sweep_s=round(time.time() - start))
