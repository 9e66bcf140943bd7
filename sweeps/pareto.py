"""Pareto fronts over a table of trials: a pure function of a DataFrame, its objectives and their directions. The
sweep layer reads its finished trials' front here (the scratch baseline trains its layouts); analysis/ re-exports
it beside the hypervolume."""

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


def non_dominated_ranks(values: Sequence[Sequence[float]]) -> list[int]:
    """Non-dominated sorting of points whose objectives are all maximised: 0 for the Pareto front, 1 for the front
    of what is left, and so on (identical points share a rank)."""
    points = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    ranks = [-1] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        front = [i for i in left if not any((points[j] >= points[i]).all() and (points[j] > points[i]).any()
                                            for j in left)]
        for i in front:
            ranks[i] = rank
        left -= set(front)
        rank += 1
    return ranks
