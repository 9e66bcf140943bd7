"""The schedules of a run: the learning rate of each step, and lambda under a head budget
(``gates.target_open``)."""

from __future__ import annotations

import math

import torch

from .config import GateConfig, TrainConfig
from .transformer import Transformer

PENALTY_RANGE = (1e-6, 1e4)  # where the head-budget controller keeps lambda
TARGET_START_PENALTY = 0.01  # lambda's start under gates.target_open when gates.penalty is 0
CLOSED_LOG_ALPHA = -20.0  # a head closed by the head budget: its gate is 0 in training and evaluation
OPEN_LOG_ALPHA = -2.0  # a head kept by the head budget starts at least here (evaluation gate 0.04, open)


def learning_rate(step: int, cfg: TrainConfig, d_model: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based).

    noam (Vaswani et al. 2017, eq. 3): ``lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``, where
    ``lr`` is the step factor; inverse_sqrt: linear warm-up to ``lr``, then ``lr * sqrt(warmup / step)``;
    constant: linear warm-up to ``lr``; cosine: linear warm-up, then cosine decay to ``min_lr`` at max_steps.
    """
    s, w = max(step, 1), cfg.warmup_steps
    warm = min(1.0, s / w) if w > 0 else 1.0
    if cfg.schedule == "noam":
        return cfg.lr * d_model**-0.5 * min(s**-0.5, s * w**-1.5)
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * min(s / w, math.sqrt(w / s))
    if cfg.schedule == "constant":
        return cfg.lr * warm
    progress = min(1.0, max(0.0, (s - w) / max(1, cfg.max_steps - w)))
    return warm * (cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress)))


def steer_penalty(model: Transformer, gates_cfg: GateConfig, max_steps: int, steps_before: int, penalty: float) -> float:
    """Lambda after optimizer step ``steps_before + 1`` under a head budget (``gates.target_open``; otherwise
    ``penalty`` unchanged).

    Before ``target_fix_at * max_steps``: lambda is multiplied by exp(target_gain * (expected open heads - target)
    / gated heads). From then on the ``target_open`` heads with the highest ``log_alpha`` are kept, the others
    closed for good (``log_alpha`` set to CLOSED_LOG_ALPHA in ``model``), and lambda is 0.
    """
    g = gates_cfg
    if g.target_open is None:
        return penalty
    gates = [gate for _, _, gate in model.gates()]
    fix_step = int(g.target_fix_at * max_steps)
    with torch.no_grad():
        if steps_before + 1 < fix_step:
            expected = float(model.expected_l0())
            factor = math.exp(g.target_gain * (expected - g.target_open) / sum(x.log_alpha.numel() for x in gates))
            return min(max(penalty * factor, PENALTY_RANGE[0]), PENALTY_RANGE[1])
        alphas = torch.cat([x.log_alpha for x in gates])
        closed = alphas == CLOSED_LOG_ALPHA
        if int((~closed).sum()) > g.target_open:  # the step the budget is fixed (or a resume before it)
            order = torch.argsort(alphas, descending=True, stable=True)
            closed = torch.ones_like(closed)
            closed[order[: g.target_open]] = False
            alphas = torch.where(closed, torch.full_like(alphas, CLOSED_LOG_ALPHA),
                                 alphas.clamp_min(OPEN_LOG_ALPHA))
            penalty = 0.0
        else:  # Adam's momentum must not reopen a closed head
            alphas = torch.where(closed, torch.full_like(alphas, CLOSED_LOG_ALPHA), alphas)
        for gate, values in zip(gates, alphas.split([x.log_alpha.numel() for x in gates]), strict=True):
            gate.log_alpha.copy_(values)
    return penalty
