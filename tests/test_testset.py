"""The test-set comparison's statistics: sacrebleu's paired bootstrap (exactly, with one seed per method), the seeds
carried into the interval, t-intervals, and what a sweep's scoring chooses."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from analysis.stats import paired_bootstrap, sentence_stats, t_interval

WORDS = [f"w{i}" for i in range(300)]


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def degrade(refs: list[str], rate: float, seed: int) -> list[str]:
    """Each word replaced with probability ``rate``: a system whose expected BLEU falls with ``rate``."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > rate else rng.choice(WORDS) for w in r.split()) for r in refs]


def test_with_one_seed_each_it_is_sacrebleus_paired_bootstrap(monkeypatch):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    refs = corpus()
    a, b = degrade(refs, 0.20, 1), degrade(refs, 0.24, 2)
    ours = paired_bootstrap([sentence_stats(a, refs)], [sentence_stats(b, refs)], samples=1000)
    _, results = PairedTest([("baseline", b), ("system", a)], {"BLEU": BLEU()}, [refs], test_type="bs",
                            n_samples=1000)()
    theirs = results["BLEU"][1]
    assert math.isclose(ours.bleu_a, BLEU().corpus_score(a, [refs]).score)
    assert math.isclose(ours.bleu_b, BLEU().corpus_score(b, [refs]).score)
    assert math.isclose(ours.bleu_a, theirs.score, abs_tol=1e-9)
    assert ours.p_value == pytest.approx(theirs.p_value, abs=1e-12)  # the same resamples, the same statistic
    assert ours.low < ours.difference < ours.high


def test_a_clear_difference_is_resolved_and_a_system_against_itself_is_not():
    refs = corpus()
    good, bad = degrade(refs, 0.05, 1), degrade(refs, 0.40, 2)
    clear = paired_bootstrap([sentence_stats(good, refs)], [sentence_stats(bad, refs)], samples=300)
    assert clear.difference > 10 and clear.low > 0 and clear.verdict == "A better"
    assert paired_bootstrap([sentence_stats(bad, refs)], [sentence_stats(good, refs)], samples=300).verdict == \
        "B better"
    same = paired_bootstrap([sentence_stats(good, refs)], [sentence_stats(good, refs)], samples=300)
    assert same.difference == 0 and same.low == 0 == same.high and same.verdict == "not resolved"


def test_the_seeds_spread_widens_the_interval():
    """Three seeds of which one is far worse: the seed-mean's interval must carry that spread; the same mean
    from one seed would look far more certain."""
    refs = corpus()
    b = [sentence_stats(degrade(refs, 0.25, s), refs) for s in (10, 11, 12)]
    steady = [sentence_stats(degrade(refs, 0.20, s), refs) for s in (1, 2, 3)]
    spread = [sentence_stats(degrade(refs, rate, s), refs) for rate, s in ((0.10, 1), (0.12, 2), (0.38, 3))]
    width = {name: (c.high - c.low) for name, c in (("steady", paired_bootstrap(steady, b, samples=300)),
                                                     ("spread", paired_bootstrap(spread, b, samples=300)))}
    assert width["spread"] > 2 * width["steady"], width
    with pytest.raises(ValueError, match="same test sentences"):
        paired_bootstrap([sentence_stats(refs[:10], refs[:10])], b, samples=10)


def test_t_interval_matches_the_t_table():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)  # t(0.975, 2 df)
    mean, half = t_interval([36.5])
    assert mean == 36.5 and math.isnan(half)
    assert t_interval(np.full(5, 7.0)) == (7.0, 0.0)
