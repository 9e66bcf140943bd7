"""Pareto fronts over a table of trials: a pure function of a DataFrame, its objectives and their directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DIRECTIONS = ("max", "min")


def pareto_mask(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> pd.Series:
    """Boolean Series, True for rows no other row dominates.

    Row a dominates row b when a is at least as good in every objective and strictly better in one. Rows with
    a missing or non-finite objective are never on the front; identical rows do not dominate each other, so
    duplicates of a front point are all on it.
    """
    if len(objectives) != len(directions) or not objectives:
        raise ValueError(f"objectives {list(objectives)} and directions {list(directions)} must pair up, at least one")
    for o, d in zip(objectives, directions):
        if o not in df.columns:
            raise KeyError(f"objective {o!r} is not a column; columns: {', '.join(map(str, df.columns))}")
        if d not in DIRECTIONS:
            raise ValueError(f"direction {d!r} of {o!r}: allowed {DIRECTIONS}")
    values = df[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    values = values * np.array([-1.0 if d == "max" else 1.0 for d in directions])  # all minimised
    valid = np.isfinite(values).all(axis=1)
    on_front = valid.copy()
    for i in np.flatnonzero(valid):
        others = values[valid]
        dominated = (others <= values[i]).all(axis=1) & (others < values[i]).any(axis=1)
        on_front[i] = not dominated.any()
    return pd.Series(on_front, index=df.index, name="pareto")


def pareto_front(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> pd.DataFrame:
    """The non-dominated rows, sorted by the first objective (best first)."""
    front = df[pareto_mask(df, objectives, directions)]
    return front.sort_values(list(objectives), ascending=[d == "min" for d in directions], kind="stable")


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
