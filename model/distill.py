"""Distillation from the unpruned model (``distill``): the teacher and the loss a step takes with it.

Per target token, the loss is (1 - weight) x label-smoothed cross-entropy + weight x T^2 x KL(teacher || student)
at temperature T (Hinton, Vinyals and Dean 2015; the T^2 keeps the gradient's scale as T changes), plus, with
``hidden_weight``, the mean over encoder and decoder layers of the squared distance between the student's and the
teacher's layer outputs per model dimension, over real (unpadded) positions (layer-wise distillation as in Xia et
al. 2022; pruning heads leaves the width alone, so no projection is needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, checkpoint_config, checkpoint_tokenizers, load_checkpoint, load_model_state
from .config import DistillConfig
from .data import PAD_ID, Tokenizers
from .transformer import Transformer, token_losses


def load_teacher(path: str | Path, tokenizers: Tokenizers, device: torch.device) -> Transformer:
    """The unpruned model at ``path``, in eval mode, every parameter frozen, on ``device``; refused (naming the
    reason) when it is pruned, has learned gates, or tokenizes otherwise than the student."""
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload)
    where = f"distill.teacher {path}"
    if cfg.model.heads is not None or cfg.gates.mode == "learned":
        raise CheckpointError(f"{where}: the teacher must be an unpruned model (this one has "
                              f"{'model.heads set' if cfg.model.heads is not None else 'learned gates'})")
    theirs = checkpoint_tokenizers(payload)
    if (theirs.src.proto, theirs.tgt.proto) != (tokenizers.src.proto, tokenizers.tgt.proto):
        raise CheckpointError(f"{where}: its sentencepiece models differ from the run's; distillation compares "
                              f"distributions over the same vocabulary")
    teacher = Transformer(cfg.model, len(theirs.src), len(theirs.tgt), cfg.gates)
    load_model_state(teacher, payload["model"], source=where)
    if next(teacher.gates(), None) is not None:
        teacher.set_gate_mode("open")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


@dataclass
class DistillOutput:
    ce_sum: torch.Tensor  # summed label-smoothed cross-entropy (differentiable)
    nll_sum: float
    kd_sum: torch.Tensor  # summed T^2 x KL(teacher || student) over target tokens (differentiable)
    hidden: torch.Tensor  # mean squared layer-output distance per dimension (differentiable; 0 when off)
    n_tokens: int


def distill_loss(student: Transformer, teacher: Transformer, src: torch.Tensor, tgt_in: torch.Tensor,
                 tgt_out: torch.Tensor, label_smoothing: float, cfg: DistillConfig) -> DistillOutput:
    """The student's cross-entropy and its distillation terms for one batch."""
    want_hidden = cfg.hidden_weight > 0.0
    with torch.no_grad():
        t_hidden: list[torch.Tensor] | None = [] if want_hidden else None
        t_memory, t_keep = teacher.encode(src, hidden=t_hidden)
        t_logits = teacher.decode(tgt_in, t_memory, t_keep, hidden=t_hidden).float()
    s_hidden: list[torch.Tensor] | None = [] if want_hidden else None
    memory, src_keep = student.encode(src, hidden=s_hidden)
    logits = student.decode(tgt_in, memory, src_keep, hidden=s_hidden).float()
    flat = logits.view(-1, logits.size(-1))
    ce, nll, keep = token_losses(flat, tgt_out.reshape(-1), label_smoothing)
    t = cfg.temperature
    log_p_student = F.log_softmax(flat[keep] / t, dim=-1)
    log_p_teacher = F.log_softmax(t_logits.view(-1, t_logits.size(-1))[keep] / t, dim=-1)
    kd = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") * t * t
    hidden = torch.zeros((), device=logits.device)
    if want_hidden:
        masks = [src_keep] * len(student.encoder) + [tgt_in.ne(PAD_ID)] * len(student.decoder)
        terms = [((s - t_h).float().square().mean(-1) * m).sum() / m.sum().clamp_min(1)
                 for s, t_h, m in zip(s_hidden, t_hidden, masks, strict=True)]
        hidden = torch.stack(terms).mean()
    return DistillOutput(ce_sum=ce, nll_sum=float(nll), kd_sum=kd, hidden=hidden, n_tokens=int(keep.sum()))
