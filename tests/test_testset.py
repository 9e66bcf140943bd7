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


def test_scoring_takes_the_validation_front_and_a_given_base_and_caches_each_score(tmp_path, monkeypatch):
    """Without Ray: a gate folder of three trials, one dominated on validation, and a base model given as a file.
    The front and the base are scored on test, the dominated trial never is; a second call translates nothing."""
    import json
    import shutil

    import pandas as pd

    import model.evaluate
    from analysis.testset import TEST_BLEU, score_sweep
    from model.train import train
    from tests.conftest import tiny_config

    run = train(tiny_config("train.max_steps=2", "train.eval_every=2"), tmp_path / "run", log=lambda _: None)
    folder = tmp_path / "results" / "t"
    rows = [{"trial_id": "base0", "stage": "pretrain", "status": "completed", "bleu": 1.0}]
    for trial, bleu, heads in (("a", 5.0, 4), ("b", 3.0, 6), ("c", 6.0, 8)):  # b is dominated by a
        ckpt = tmp_path / "ckpts" / trial
        ckpt.mkdir(parents=True)
        shutil.copy(run.checkpoint, ckpt / run.checkpoint.name)
        rows.append({"trial_id": trial, "stage": "prune", "status": "completed", "bleu": bleu, "open_heads": heads,
                     "checkpoint": str(ckpt)})
    folder.mkdir(parents=True)
    pd.DataFrame(rows[1:]).to_csv(folder / "trials.csv", index=False)  # a given base has no row of its own
    (folder / "sweep.json").write_text(json.dumps({"name": "t", "method": "gates",
                                                   "pretrain": {"checkpoint": str(run.checkpoint)},
                                                   "objectives": [{"metric": "bleu", "mode": "max"},
                                                                  {"metric": "open_heads", "mode": "min"}]}))
    calls = []
    original = model.evaluate.evaluate_checkpoint
    monkeypatch.setattr(model.evaluate, "evaluate_checkpoint", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    _, scores = score_sweep(folder, beam=2, log=lambda _: None)
    table = scores.table.set_index("trial_id")
    assert sorted(table.index) == ["a", "base", "c"] and len(calls) == 3
    assert table.loc["base", "heads"] == 24 and table.loc["base", "method"] == "base"  # from the file's config
    assert (table.loc[["a", "c"], "chosen_on"] == "validation front").all()
    assert table[TEST_BLEU].notna().all() and (table["sentences"] == 20).all()
    _, again = score_sweep(folder, beam=2, log=lambda _: None)
    assert len(calls) == 3 and again.table[TEST_BLEU].tolist() == scores.table[TEST_BLEU].tolist()  # cached
    score_sweep(folder, beam=3, log=lambda _: None)  # other settings: scored again
    assert len(calls) == 6
