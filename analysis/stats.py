"""Statistics of the comparisons: t-intervals over seeds, and the paired bootstrap over test sentences.

Pure functions: sentences and numbers in, numbers out. :func:`paired_bootstrap` uses sacrebleu's sufficient
statistics, resampling and p-value, so that with one seed per method it is exactly sacrebleu's paired bootstrap
test (``sacrebleu --paired-bs``); with several seeds each resample also redraws each method's seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU

BOOTSTRAP_SEED = 12345  # sacrebleu's default (SACREBLEU_SEED)
CONFIDENCE = 0.95




def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of its ``confidence`` t-interval); the half-width is NaN for fewer than 2 values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def sentence_stats(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's sufficient statistics of BLEU, one row per sentence (float32, as its tests use them)."""
    return np.array(BLEU()._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype="float32")


def _bleu(stats: np.ndarray) -> float:
    return BLEU()._compute_score_from_stats([x.item() for x in stats]).score


@dataclass
class Comparison:
    """Method A against method B on one test set: seed-mean BLEU of each, their difference A - B, its interval
    and the paired bootstrap p-value (H0: no difference)."""

    bleu_a: float
    bleu_b: float
    difference: float
    low: float
    high: float
    p_value: float
    seeds_a: int
    seeds_b: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "not resolved"


def paired_bootstrap(a: Sequence[np.ndarray], b: Sequence[np.ndarray], samples: int = 1000,
                     seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Comparison:
    """Paired bootstrap over test sentences of two methods, each given as the :func:`sentence_stats` of its seeds.

    The sentence resamples are drawn exactly as sacrebleu's paired bootstrap draws them (the same generator, seed
    and call); each resample scores every seed's system on the same sentences, and redraws, with replacement, which
    seeds each method's mean is taken over (methods with one seed keep it). The p-value is sacrebleu's: the share of
    centred resampled |A - B| differences above the observed one."""
    if not a or not b:
        raise ValueError("each method needs at least one seed's statistics")
    n = len(a[0])
    if any(len(s) != n for s in [*a, *b]):
        raise ValueError("every system must be scored on the same test sentences")
    rng = np.random.default_rng(seed)
    idxs = rng.choice(n, size=(samples, n), replace=True)  # sacrebleu's call, so its resamples
    weights = np.stack([np.bincount(row, minlength=n) for row in idxs]).astype("float32")  # (samples, n)

    def resampled(systems: Sequence[np.ndarray]) -> np.ndarray:  # (seeds, samples) BLEU of each resample
        return np.array([[_bleu(row) for row in weights @ stats] for stats in systems])

    scores_a, scores_b = resampled(a), resampled(b)
    seed_rng = np.random.default_rng(seed + 1)

    def seed_means(scores: np.ndarray) -> np.ndarray:
        if len(scores) == 1:
            return scores[0]
        pick = seed_rng.integers(0, len(scores), size=(samples, len(scores)))
        return np.take_along_axis(scores.T, pick, axis=1).mean(axis=1)

    mean_a, mean_b = seed_means(scores_a), seed_means(scores_b)
    observed_a = float(np.mean([_bleu(s.sum(0).round().astype(int)) for s in a]))  # integer counts: corpus BLEU
    observed_b = float(np.mean([_bleu(s.sum(0).round().astype(int)) for s in b]))
    diffs = mean_a - mean_b
    spread = np.abs(diffs)
    centred = spread - spread.mean()
    p = (int(np.sum(centred > abs(observed_a - observed_b))) + 1) / (samples + 1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Comparison(observed_a, observed_b, observed_a - observed_b, float(low), float(high), p, len(a), len(b))
