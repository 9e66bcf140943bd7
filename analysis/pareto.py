"""Pareto fronts over a table of trials and their hypervolume: pure functions of a DataFrame, its objectives and their
directions (the front itself lives in the sweep layer, sweeps/pareto.py, which reads it too)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweeps.pareto import DIRECTIONS, pareto_front, pareto_mask  # noqa: F401 - analysis's names for them


def hypervolume(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str],
                reference: Sequence[float]) -> float:
    """Hypervolume of the front of ``df`` against ``reference`` (a point every useful trial beats).

    The volume of objective space that the front dominates and that dominates ``reference``; larger is better.
    Computed by moocore (exact algorithms for any number of objectives) after turning every objective into one to
    minimise. Rows that do not beat the reference in every objective add nothing.
    """
    import moocore

    if len(reference) != len(objectives):
        raise ValueError(f"reference {list(reference)} needs one value per objective {list(objectives)}")
    front = df[pareto_mask(df, objectives, directions)]
    sign = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    ref = np.asarray(reference, dtype=np.float64) * sign
    points = front[list(objectives)].to_numpy(dtype=np.float64) * sign
    points = points[(points < ref).all(axis=1)]
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=ref))


def default_reference(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> list[float]:
    """A reference point just beyond the worst value of each objective (0 for a maximised BLEU-like score)."""
    ref = []
    for o, d in zip(objectives, directions):
        values = pd.to_numeric(df[o], errors="coerce")
        values = values[np.isfinite(values)]
        if d == "max":
            ref.append(min(0.0, float(values.min())) if len(values) else 0.0)
        else:
            ref.append(float(values.max()) + 1.0 if len(values) else 1.0)
    return ref
