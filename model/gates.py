"""Hard Concrete gates on attention heads and their L0 penalty.

A gate per head (Louizos et al. 2018, "Learning Sparse Neural Networks through L0 Regularization"; used on
attention heads by Voita et al. 2019). With parameters ``log_alpha``, temperature ``beta`` and stretch
interval ``(gamma, zeta)``:

    training (eq. 10):  u ~ U(0, 1)
                        s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
                        z = min(1, max(0, s * (zeta - gamma) + gamma))
    evaluation:         z = min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) + gamma))
    expected L0 (eq. 12): P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))

The evaluation gate is deterministic; a head whose evaluation gate is 0 contributes nothing and can be removed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-6  # keeps u away from 0 and 1 so that log u and log(1 - u) stay finite


class HardConcreteGate(nn.Module):
    """One Hard Concrete gate per head of one attention block.

    Args:
        n_heads: number of heads gated.
        beta: temperature of the concrete distribution.
        gamma, zeta: stretch interval, gamma < 0 < 1 < zeta.
        init_log_alpha: initial value of every ``log_alpha``.
        per_example: draw one gate sample per sentence (True) or one per batch (False) while training.
    """

    def __init__(
        self,
        n_heads: int,
        beta: float = 0.33,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_log_alpha: float = 2.0,
        per_example: bool = True,
    ) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_heads,), float(init_log_alpha)))
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.per_example = per_example
        self.init_log_alpha = init_log_alpha

    def extra_repr(self) -> str:
        return f"n_heads={self.log_alpha.numel()}, beta={self.beta}, gamma={self.gamma}, zeta={self.zeta}"

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.fill_(self.init_log_alpha)

    def sample(self, batch_size: int) -> torch.Tensor:
        """A noisy training sample of the gates: ``[B, H]`` (per example) or ``[1, H]`` (per batch)."""
        rows = batch_size if self.per_example else 1
        u = torch.rand(rows, self.log_alpha.numel(), device=self.log_alpha.device).clamp(EPS, 1.0 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def eval_gates(self) -> torch.Tensor:
        """Deterministic gates in [0, 1]: ``[H]``."""
        s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def p_open(self) -> torch.Tensor:
        """P(gate != 0) per head, the expected L0 norm's summands: ``[H]``."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def forward(self, batch_size: int) -> torch.Tensor:
        """Gates to multiply into head outputs: ``[B or 1, H]`` while training, ``[1, H]`` in eval mode."""
        if self.training:
            return self.sample(batch_size)
        return self.eval_gates().unsqueeze(0)
