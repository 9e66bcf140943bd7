"""Pareto fronts on hand-made frames: directions, ties, duplicates, missing values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.pareto import hypervolume, pareto_front, pareto_mask

OBJ, DIR = ["bleu", "open_heads"], ["max", "min"]


def test_front_of_bleu_up_heads_down():
    df = pd.DataFrame({"bleu": [30.0, 29.0, 31.0, 25.0, 28.0], "open_heads": [10, 6, 24, 6, 12]},
                      index=list("abcde"))
    assert list(pareto_mask(df, OBJ, DIR)) == [True, True, True, False, False]
    assert list(pareto_front(df, OBJ, DIR).index) == ["c", "a", "b"]  # best BLEU first


def test_ties_and_duplicates():
    df = pd.DataFrame({"bleu": [30.0, 30.0, 30.0, 29.0], "open_heads": [8, 8, 9, 8]})
    # the two identical points do not dominate each other; (30, 9) and (29, 8) are dominated by them
    assert list(pareto_mask(df, OBJ, DIR)) == [True, True, False, False]


def test_directions_flip_the_front():
    df = pd.DataFrame({"bleu": [1.0, 2.0], "open_heads": [1, 2]})
    assert list(pareto_mask(df, OBJ, ["max", "max"])) == [False, True]
    assert list(pareto_mask(df, OBJ, ["min", "min"])) == [True, False]
    assert list(pareto_mask(df, OBJ, DIR)) == [True, True]


def test_missing_or_non_finite_objectives_are_never_on_the_front():
    df = pd.DataFrame({"bleu": [math.nan, 10.0, math.inf, None], "open_heads": [1, 5, 1, 1]})
    assert list(pareto_mask(df, OBJ, DIR)) == [False, True, False, False]


def test_single_objective_and_bad_arguments():
    df = pd.DataFrame({"bleu": [1.0, 3.0, 3.0]})
    assert list(pareto_mask(df, ["bleu"], ["max"])) == [False, True, True]
    with pytest.raises(KeyError, match="'chrf' is not a column"):
        pareto_mask(df, ["chrf"], ["max"])
    with pytest.raises(ValueError, match="direction 'up'"):
        pareto_mask(df, ["bleu"], ["up"])
    with pytest.raises(ValueError, match="pair up"):
        pareto_mask(df, ["bleu"], ["max", "min"])


def test_hypervolume_of_a_hand_made_front():
    from analysis.pareto import default_reference

    df = pd.DataFrame({"bleu": [30.0, 29.0, 25.0, 30.0], "open_heads": [10, 6, 6, 10]})
    # rectangles from the reference (BLEU 0, 24 heads): 30 x 14 and 29 x 18 overlap in 29 x 14
    assert hypervolume(df, OBJ, DIR, [0.0, 24.0]) == pytest.approx(30 * 14 + 29 * 18 - 29 * 14)
    assert hypervolume(df.iloc[[2]], OBJ, DIR, [0.0, 24.0]) == pytest.approx(25 * 18)
    assert hypervolume(df, OBJ, DIR, [31.0, 24.0]) == 0.0  # nothing beats the reference
    assert default_reference(df, OBJ, DIR) == [0.0, 11.0]
    worse = df.assign(bleu=df["bleu"] - 1)
    assert hypervolume(worse, OBJ, DIR, [0.0, 24.0]) < hypervolume(df, OBJ, DIR, [0.0, 24.0])
    with pytest.raises(ValueError, match="one value per objective"):
        hypervolume(df, OBJ, DIR, [0.0])


def test_hypervolume_of_three_objectives_equals_a_count_of_unit_cells():
    """Integer points: the dominated volume is the number of unit cells some point dominates (brute force)."""
    import itertools

    import numpy as np

    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(7, 3))
    df = pd.DataFrame(pts, columns=["a", "b", "c"])
    ref = [6, 6, 6]
    cells = sum(any((p <= np.array(cell)).all() for p in pts) for cell in itertools.product(range(6), repeat=3))
    assert hypervolume(df, ["a", "b", "c"], ["min", "min", "min"], ref) == pytest.approx(cells)
    flipped = df.assign(b=-df["b"])  # a maximised objective: the same volume
    assert hypervolume(flipped, ["a", "b", "c"], ["min", "max", "min"], [6, -6, 6]) == pytest.approx(cells)
