"""The learning rate of each optimizer step."""

from __future__ import annotations

import math

from .config import TrainConfig


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
