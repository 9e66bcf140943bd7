"""Constraints on the gate trials' scores (``constraints:`` in a sweep), e.g. "BLEU within 0.5 of the base model":

    constraints:
      - {metric: bleu, min_relative_to_base: -0.5}   # feasible: bleu >= the base model's - 0.5
      - {metric: open_heads, max: 12}                # feasible: at most 12 heads open

They go to Optuna's own constraint handling (TPE and NSGA-II rank infeasible trials behind feasible ones), so that
the sampler spends its trials near the feasible edge: each finished trial's violations are set as its Optuna
constraints (``Trial.set_constraint``, one per bound; a value <= 0 is met), and the table and the report mark the
trials that meet them all (``feasible``). A bound relative to the
base model is the base model's own score on the trials' validation sentences, with the trials' evaluation settings,
measured once by the driver before the first trial and kept in ``<sweep>/constraints.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from model import metrics as M

from .storage import exists, join_storage, read_bytes, write_text

CONSTRAINTS_FILE = "constraints.json"  # the bounds in use, per base model (hash), and how they were found
FEASIBLE = "feasible"  # trials.csv: True where a gate trial meets every constraint
RELATIVE_METRICS = (M.BLEU, M.CHRF)  # what a bound relative to the base model may name


@dataclass(frozen=True)
class Bound:
    metric: str
    sense: str  # "min" (value >= bound) or "max" (value <= bound)
    value: float

    def violation(self, value: Any) -> float:
        """<= 0 where ``value`` meets the bound; +inf where it is missing or not finite."""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return math.inf
        return float(self.value - value) if self.sense == "min" else float(value - self.value)

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.sense == 'min' else '<='} {self.value:.4g}"

    @property
    def name(self) -> str:
        """The Optuna constraint's name (its key among the trial's constraints)."""
        return f"{self.metric} {'>=' if self.sense == 'min' else '<='} {self.value:.6g}"


def bounds_for(constraints: Sequence[Any], base_scores: dict[str, float] | None) -> list[Bound]:
    """The sweep's constraints as bounds, those relative to the base model from its ``base_scores``."""
    out = []
    for c in constraints:
        if c.min is not None:
            out.append(Bound(c.metric, "min", float(c.min)))
        elif c.max is not None:
            out.append(Bound(c.metric, "max", float(c.max)))
        else:
            offset = c.min_relative_to_base if c.min_relative_to_base is not None else c.max_relative_to_base
            if base_scores is None or c.metric not in base_scores:
                raise ValueError(f"constraint on {c.metric} relative to the base model: no base score")
            sense = "min" if c.min_relative_to_base is not None else "max"
            out.append(Bound(c.metric, sense, float(base_scores[c.metric]) + float(offset)))
    return out


def needs_base(constraints: Sequence[Any]) -> bool:
    return any(c.min_relative_to_base is not None or c.max_relative_to_base is not None for c in constraints)


def violations(result: dict[str, Any], bounds: Sequence[Bound]) -> list[float]:
    return [b.violation(result.get(b.metric)) for b in bounds]


def constraint_values(result: dict[str, Any], bounds: Sequence[Bound]) -> dict[str, float]:
    """A finished trial's Optuna constraints: bound name -> violation (<= 0: met; a missing score violates by a
    large finite amount, since Optuna sums the positive values)."""
    return {b.name: min(v, 1e9) for b, v in zip(bounds, violations(result, bounds), strict=True)}


def base_bounds(experiment: str, constraints: Sequence[Any], bases: dict[str, str],
                score: Callable[[str], dict[str, float]]) -> dict[str, list[Bound]]:
    """Per base model (hash -> checkpoint): its bounds. Base scores come from ``constraints.json`` where it holds
    them for that checkpoint, else from ``score(checkpoint)`` (then written there)."""
    path = join_storage(experiment, CONSTRAINTS_FILE)
    saved = json.loads(read_bytes(path)) if exists(path) else {}
    out, changed = {}, False
    for key, checkpoint in bases.items():
        entry = saved.get(key) or {}
        if needs_base(constraints) and entry.get("checkpoint") != checkpoint:
            entry, changed = {"checkpoint": checkpoint, "base_scores": score(checkpoint)}, True
        out[key] = bounds_for(constraints, entry.get("base_scores"))
        if entry.get("bounds") != [dataclasses.asdict(b) for b in out[key]]:
            entry["bounds"], changed = [dataclasses.asdict(b) for b in out[key]], True
        saved[key] = entry
    if changed:
        write_text(path, json.dumps(saved, indent=1) + "\n")
    return out


def feasibility(rows: list[dict[str, Any]], bounds: dict[str, list[Bound]], base_column: str) -> None:
    """Mark each row (a trials-table row of a gate trial) ``feasible``: every bound of its base model met."""
    for row in rows:
        found = bounds.get(str(row.get(base_column))) or next(iter(bounds.values()), None)
        if found is not None:
            row[FEASIBLE] = all(v <= 0 for v in violations(row, found))


def read_bounds(experiment: str) -> dict[str, list[Bound]]:
    """The bounds a sweep used (``constraints.json``), per base model; {} where it has none."""
    path = join_storage(experiment, CONSTRAINTS_FILE)
    if not exists(path):
        return {}
    return {key: [Bound(**b) for b in entry.get("bounds", [])] for key, entry in json.loads(read_bytes(path)).items()}
