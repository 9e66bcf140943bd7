"""The head budget (``gates.target_open``): gates that end with exactly k heads open.

While the gates prune (the steps before ``target_fix_at x max_steps``) they train under a Lagrangian constraint
on the expected fraction of closed heads, as FLOP (Wang, Wohlwend and Lei 2020, "Structured Pruning of Large
Language Models") and CoFi (Xia, Zhong and Chen 2022, "Structured Pruning Learns Compact and Accurate Models")
do: for each budget group (all gated heads, or one attention type) with ``n`` heads and target ``k``,

    s = 1 - sum of P(gate != 0) / n          expected fraction closed
    t = (1 - k / n) * min(1, step / warmup)  target fraction, warmed up linearly from 0
    term = lambda1 * (s - t) + lambda2 * (s - t) ** 2

is added to the loss. The model's parameters descend it; lambda1 and lambda2 (one pair per group, starting at 0)
ascend it with an Adam of their own, so the pressure grows for as long as the gates miss the target. An
evaluation keeps the k heads of each group with the highest ``log_alpha`` (a deterministic top-k), so the heads
counted open are the budget; from the fix step on, those heads are kept for good and the others closed.

A kept head counts as open at evaluation during pruning with at least ``OPEN_LOG_ALPHA`` (its own gate, if
higher). From the fix step on it is held at least as open as every gate started (``gates.init_log_alpha``, eval
gate 0.96 at the default 2.0): where the constraint overshot the target and the top-k had to be chosen among
nearly closed heads, the kept heads would otherwise start fine-tuning almost off (eval gate 0.04 at
``OPEN_LOG_ALPHA``) and learn their way back at the gates' learning rate.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from . import metrics as M
from .config import GateConfig, ModelConfig, budget_targets
from .gates import HardConcreteGate
from .transformer import Transformer

CLOSED_LOG_ALPHA = -20.0  # a head closed by the budget: its gate is 0 in training and evaluation
OPEN_LOG_ALPHA = -2.0  # while pruning, a head in the top-k has at least this log_alpha (evaluation gate 0.04: open)


class HeadBudget:
    """The constraint, its multipliers and the top-k of one run with ``gates.target_open`` set."""

    def __init__(self, model: Transformer, g: GateConfig, m: ModelConfig, max_steps: int) -> None:
        self.model = model
        self.targets = budget_targets(g, m)  # group -> (k, n)
        self.fix_step = int(g.target_fix_at * max_steps)
        self.warmup_steps = max(1, round(g.target_warmup * max(1, self.fix_step)))
        self.fixed_floor = max(OPEN_LOG_ALPHA, g.init_log_alpha)  # a kept head's least log_alpha after the fix
        device = next(model.parameters()).device
        self.lambdas = torch.zeros(2, len(self.targets), device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.lambdas], lr=g.lagrangian_lr, maximize=True)

    def _groups(self) -> list[list[torch.nn.Parameter]]:
        """The ``log_alpha`` of each group's gates, in the order of ``targets``."""
        return [[gate.log_alpha for gate in group] for group in self._gate_groups()]

    def _gate_groups(self) -> list[list[HardConcreteGate]]:
        """Each group's gates, in the order of ``targets``."""
        gates = list(self.model.gates())
        return [[gate for kind, _, gate in gates if group in ("all", kind)] for group in self.targets]

    def pruning(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is one of the pruning steps, where the constraint applies."""
        return step < self.fix_step

    def target_closed(self, step: int) -> torch.Tensor:
        """The target fraction of closed heads per group at optimizer step ``step``."""
        final = torch.tensor([1.0 - k / n for k, n in self.targets.values()], device=self.lambdas.device)
        return final * min(1.0, step / self.warmup_steps)

    def expected_open(self) -> torch.Tensor:
        """Expected open heads per group, the sum of P(gate != 0) (differentiable)."""
        return torch.stack([torch.cat([gate.p_open() for gate in group]).sum() for group in self._gate_groups()])

    def term(self, step: int) -> torch.Tensor:
        """The Lagrangian term of optimizer step ``step`` (model parameters descend it, the lambdas ascend it)."""
        n = torch.tensor([float(n) for _, n in self.targets.values()], device=self.lambdas.device)
        gap = (1.0 - self.expected_open() / n) - self.target_closed(step)
        return (self.lambdas[0] * gap + self.lambdas[1] * gap.square()).sum()

    def ascend(self) -> None:
        """Raise the lambdas along their gradient (taken by the step's backward pass), then clear it."""
        if self.lambdas.grad is not None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def kept(self) -> list[torch.Tensor]:
        """Per group: the flat indices (in the group's order) of its k heads with the highest log_alpha; ties go
        to the earlier head."""
        out = []
        for (k, _), group in zip(self.targets.values(), self._groups(), strict=True):
            alphas = torch.cat([a.detach() for a in group])
            out.append(torch.argsort(alphas, descending=True, stable=True)[:k])
        return out

    @torch.no_grad()
    def _top_k_alphas(self, floor: float = OPEN_LOG_ALPHA) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(log_alpha, its value with the budget applied) for every gate: each group's top-k kept (at least
        ``floor``), every other head CLOSED_LOG_ALPHA."""
        out = []
        for keep, group in zip(self.kept(), self._groups(), strict=True):
            alphas = torch.cat([a.detach() for a in group])
            closed = torch.ones_like(alphas, dtype=torch.bool)
            closed[keep] = False
            applied = torch.where(closed, torch.full_like(alphas, CLOSED_LOG_ALPHA), alphas.clamp_min(floor))
            out.extend(zip(group, applied.split([a.numel() for a in group]), strict=True))
        return out

    @contextlib.contextmanager
    def top_k(self):
        """Within: the model with the budget applied (what an evaluation scores); the log_alphas come back after."""
        saved = [(a, a.detach().clone()) for a, _ in self._top_k_alphas()]
        try:
            with torch.no_grad():
                for a, value in self._top_k_alphas():
                    a.copy_(value)
            yield
        finally:
            with torch.no_grad():
                for a, value in saved:
                    a.copy_(value)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After optimizer step ``step``: from the fix step on, keep each group's top-k for good (at the fix step
        they are chosen and raised to at least the gates' open initialisation; afterwards Adam's momentum may
        neither reopen a closed head nor close a kept one)."""
        if self.pruning(step):
            return
        for a, value in self._top_k_alphas(self.fixed_floor):
            a.copy_(value)

    def metrics(self, step: int) -> dict[str, float]:
        """lambda1, lambda2, the expected open heads and the target open heads now, per group (suffix /<type>
        for per-type budgets)."""
        with torch.no_grad():
            expected = self.expected_open().tolist()
            target = self.target_closed(max(step, 0)).tolist()
            lambdas = self.lambdas.detach().tolist()
        out: dict[str, float] = {}
        for i, (group, (_, n)) in enumerate(self.targets.items()):
            suffix = "" if group == "all" else f"/{group}"
            out[M.LAMBDA1 + suffix] = lambdas[0][i]
            out[M.LAMBDA2 + suffix] = lambdas[1][i]
            out[M.EXPECTED_OPEN + suffix] = expected[i]
            out[M.TARGET_OPEN + suffix] = n * (1.0 - target[i])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.lambdas.copy_(state["lambdas"])
        self.optimizer.load_state_dict(state["optimizer"])
