"""The test-set comparison's statistics: sacrebleu's paired bootstrap (exactly, with one seed per method), the seeds
carried into the interval, t-intervals, and what a sweep's scoring chooses."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

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
    from tests.helpers import tiny_config

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
    # method folders of a sweep part still running beside it: one made but empty, one whose trial has not reported
    # yet; both are left out, and said to be, while the finished folders are compared
    (folder.parent / "t-importance").mkdir()  # each with the sweep.json a method writes as it starts
    (folder.parent / "t-importance" / "sweep.json").write_text(json.dumps({"name": "t"}))
    (folder.parent / "t-random" / "layout_trainable_0").mkdir(parents=True)
    (folder.parent / "t-random" / "layout_trainable_0" / "result.json").write_text("")
    (folder.parent / "t-random" / "sweep.json").write_text(json.dumps({"name": "t"}))
    said = []
    _, partial = score_sweep(folder, beam=3, log=said.append)  # the settings cached last: nothing translated
    assert sorted(partial.table["trial_id"]) == ["a", "base", "c"] and len(calls) == 6
    assert any(line.startswith("test set: importance: left out (") for line in said), said
    assert any(line.startswith("test set: random: left out (no finished trial in ") for line in said), said
    run.checkpoint.unlink()  # a sweep kept without the base model's weights: its cached score knows its heads
    _, kept = score_sweep(folder, beam=3, log=lambda _: None)
    assert len(calls) == 6 and kept.table.set_index("trial_id").loc["base", "heads"] == 24


def test_the_target_is_met_only_where_the_mean_clears_the_line_with_enough_heads_removed():
    """Base 36.0 on 24 heads, tolerance 0.5, 75% removed (<= 6 heads): a method within tolerance at 6 heads meets it
    (by its interval when the interval's low end clears the line too); one within tolerance only at 12 misses it;
    one never within tolerance says none, with the best it reached; the base row is no candidate."""
    import pandas as pd

    from analysis.load import LABEL
    from analysis.testset import TEST_BLEU, HeldOutScores, point_table, target_table

    rows = [{"method": "base", LABEL: "base model", "trial_id": "base", "heads": 24, "budget": math.nan,
             "seed": math.nan, "bleu": math.nan, TEST_BLEU: 36.0}]
    means = {"good": {3: 34.0, 6: 35.8, 12: 36.1}, "late": {3: 33.0, 6: 35.0, 12: 35.9},
             "poor": {3: 30.0, 6: 31.0, 12: 34.5}}
    for label, per_budget in means.items():
        for budget, mean in per_budget.items():
            for seed, offset in enumerate((-0.05, 0.0, 0.05)):
                rows.append({"method": "importance", LABEL: label, "trial_id": f"{label}{budget}{seed}",
                             "heads": budget, "budget": budget, "seed": seed, "bleu": mean, TEST_BLEU: mean + offset})
    # within tolerance at 3 heads on the mean only (seeds far apart), at 6 by the interval too
    for budget, mean, spread in ((3, 35.6, 1.0), (6, 36.0, 0.05), (12, 36.2, 0.05)):
        for seed, offset in enumerate((-spread, 0.0, spread)):
            rows.append({"method": "random", LABEL: "split", "trial_id": f"split{budget}{seed}", "heads": budget,
                         "budget": budget, "seed": seed, "bleu": mean, TEST_BLEU: mean + offset})
    rows.append({"method": "gates", LABEL: "gates", "trial_id": "g", "heads": 5, "budget": math.nan,
                 "seed": math.nan, "bleu": 36.0, TEST_BLEU: 35.7})  # one run on the front: the mean is the run
    # scratch: each layout by its seeds; 0 heads within tolerance on the mean, its two seeds far apart
    for layout, heads, seeds in (("enc_self=0,0,0", 0, (35.2, 36.4)), ("enc_self=7,6,3", 16, (37.0, 37.2))):
        for seed, bleu in enumerate(seeds):
            rows.append({"method": "scratch", LABEL: "scratch", "trial_id": f"s{heads}{seed}", "heads": heads,
                         "budget": math.nan, "seed": seed, "bleu": bleu, TEST_BLEU: bleu, "layout": layout})
    scores = HeldOutScores(pd.DataFrame(rows), {}, "open_heads")
    points = point_table(scores)
    table, base = target_table(scores, points, removed=0.75, tolerance=0.5)
    got = table.set_index(LABEL)
    assert base == 36.0 and "base model" not in got.index
    assert got.loc["good", "fewest heads within tolerance"] == "6" and got.loc["good", "target"] == "met (interval)"
    assert got.loc["late", "fewest heads within tolerance"] == "12" and got.loc["late", "target"] == "missed"
    assert got.loc["poor", "fewest heads within tolerance"] == "none" and got.loc["poor", "target"] == "missed"
    assert got.loc["poor", "best test BLEU (heads)"] == "34.50 (12)"
    assert got.loc["gates", "target"] == "met (mean)"  # a single run has no interval to clear the line with
    assert pd.isna(got.loc["gates", "fewest heads, interval above the line"])
    assert got.loc["good", "fewest heads, interval above the line"] == "6"
    assert got.loc["late", "fewest heads, interval above the line"] == "12"
    assert got.loc["poor", "fewest heads, interval above the line"] == "none"
    # the fewest heads on the mean (3) have an interval reaching below the line; 6 heads clear it: met by interval
    assert got.loc["split", "fewest heads within tolerance"] == "3"
    assert got.loc["split", "fewest heads, interval above the line"] == "6"
    assert got.loc["split", "target"] == "met (interval)"
    assert got.loc["good", "test BLEU there"] == pytest.approx(35.8)
    # scratch by its layouts: 0 heads clears the line on the mean (35.8), not with two seeds' interval; 16 does
    assert got.loc["scratch", "fewest heads within tolerance"] == "0"
    assert got.loc["scratch", "fewest heads, interval above the line"] == "16"
    assert got.loc["scratch", "target"] == "met (mean)"


def test_table_two_pairs_each_scratch_layout_with_the_pruned_model_of_that_layout():
    """Scratch layouts against the gate trial with the same per-layer heads (the better one on validation of two),
    the full layout against the base model, and a layout no pruned model has is said to have none. A clearly worse
    scratch model is resolved as worse; the full model from scratch with the base's own translations is not."""
    import pandas as pd

    from analysis.load import LABEL
    from analysis.testset import TEST_BLEU, HeldOutScores, row_layout, table_two

    refs = corpus()
    good, bad = degrade(refs, 0.05, 1), degrade(refs, 0.40, 2)
    systems = {"base": good, "g1": bad, "g2": good, "s0": bad, "s1": degrade(refs, 0.41, 3), "f0": good, "f1": good,
               "o0": bad}
    gate_row = pd.Series({"open_heads/enc_self/0": 2, "open_heads/enc_self/1": 1, "open_heads/dec_self/0": 4})
    assert row_layout(gate_row, ["enc_self"]) == "enc_self=2,1"
    assert row_layout(gate_row, ["enc_self", "dec_cross"]) is None  # no column of that type: no layout
    rows = [("base", "base model", "base", 8, math.nan, 40.0, "enc_self=4,4"),
            ("gates", "gates", "g1", 3, math.nan, 30.0, "enc_self=2,1"),
            ("gates", "gates", "g2", 3, math.nan, 31.0, "enc_self=2,1"),
            ("scratch", "scratch", "s0", 3, 0, math.nan, "enc_self=2,1"),
            ("scratch", "scratch", "s1", 3, 1, math.nan, "enc_self=2,1"),
            ("scratch", "scratch", "f0", 8, 0, math.nan, "enc_self=4,4"),
            ("scratch", "scratch", "f1", 8, 1, math.nan, "enc_self=4,4"),
            ("scratch", "scratch", "o0", 1, 0, math.nan, "enc_self=1,0")]
    table = pd.DataFrame([{"method": m, LABEL: lab, "trial_id": t, "heads": h, "seed": seed, "bleu": val,
                           TEST_BLEU: BLEU().corpus_score(systems[t], [refs]).score, "layout": layout}
                          for m, lab, t, h, seed, val, layout in rows])
    stats = {(lab, t): sentence_stats(systems[t], refs) for _, lab, t, *_ in rows}
    got = table_two(HeldOutScores(table, stats, "open_heads/enc_self"), samples=200).set_index("layout")
    assert list(got["heads"]) == [1, 3, 8]  # smallest first
    assert got.loc["enc_self=2,1", "pruned from trained"] == "gates g2"
    assert got.loc["enc_self=2,1", "scratch seeds"] == 2
    assert got.loc["enc_self=2,1", "verdict"] == "pruned better" and got.loc["enc_self=2,1", "95% low"] > 0
    assert got.loc["enc_self=4,4", "pruned from trained"] == "base model"
    assert got.loc["enc_self=4,4", "verdict"] == "not resolved" and got.loc["enc_self=4,4", "pruned - scratch"] == 0
    assert got.loc["enc_self=1,0", "verdict"] == "no pruned model with this layout"


def test_the_comparison_takes_every_method_folder_of_the_sweep_beside_its_gate_folder(tmp_path):
    """A sweep run in --resume parts records only the last part's methods: locally, every method folder of the sweep
    beside the gate folder is compared (in the order methods run), another sweep's never; in remote storage the
    recorded methods' folders."""
    from pathlib import Path
    from types import SimpleNamespace

    from analysis.testset import method_folders

    for name in ("s", "s-importance", "s-importance-ft5", "s-random", "s-iterative-ft5", "other-random",
                 "s-random-ft9"):  # ft9: no fine-tuning length of this sweep
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep.json").write_text("{}")
    (tmp_path / "s-gates_budget" / "wandb").mkdir(parents=True)  # a folder of W&B runs only: no method folder
    record = {"name": "s", "method": ["gates", "importance"], "baselines": {"finetune_steps": [0, 5]}}
    local = SimpleNamespace(config=record, remote=False, source=str(tmp_path / "s"), label="gates")
    got = [(method, label, Path(folder).name, steps) for method, label, folder, steps in method_folders(local)]
    assert got == [("gates", "gates", "s", 0), ("importance", "importance", "s-importance", 0),
                   ("importance", "importance + 5 steps", "s-importance-ft5", 5),
                   ("iterative", "iterative + 5 steps", "s-iterative-ft5", 5), ("random", "random", "s-random", 0)]
    remote = SimpleNamespace(config=record, remote=True, source="s3://bucket/sweeps/s", label="gates")
    assert [folder for _, _, folder, _ in method_folders(remote)] == [
        "s3://bucket/sweeps/s", "s3://bucket/sweeps/s-importance", "s3://bucket/sweeps/s-importance-ft5"]


def _sweep_folder(folder, name: str, method: str, rows: list[dict], config: dict) -> None:
    import json

    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({"name": name, "method": method, **config}))


def test_a_sweep_of_some_methods_is_compared_in_its_first_folder_with_the_sweeps_it_includes(tmp_path):
    """A sweep that ran importance alone (no gate folder) scores and compares what it ran, in its own folder; the
    sweep it includes (test.include) adds its fine-tuned budget methods and its gate front as rows of their own,
    compared with the same method at the same budget and kept out of the sweep's own comparisons; its untuned
    layouts stay out. An included sweep that pruned another base model is refused."""
    import shutil

    import pytest

    from analysis.testset import (
        ORIGIN,
        ScoringError,
        comparison_report,
        comparisons,
        included_comparisons,
        point_table,
        score_sweep,
    )
    from model.train import train
    from tests.helpers import tiny_config

    runs = {steps: train(tiny_config(f"train.max_steps={steps}", f"train.eval_every={steps}"), tmp_path / f"r{steps}",
                         log=lambda _: None).checkpoint for steps in (2, 4, 6)}

    def trial(trial_id: str, steps: int, **row) -> dict:
        ckpt = tmp_path / "ckpts" / trial_id
        ckpt.mkdir(parents=True)
        shutil.copy(runs[steps], ckpt / runs[steps].name)
        return {"trial_id": trial_id, "stage": "prune", "status": "completed", "checkpoint": str(ckpt), **row}

    def budget_rows(prefix: str, steps: int, **extra) -> list[dict]:
        return [trial(f"{prefix}{b}{s}", steps, bleu=1.0, open_heads=b, **{"param.baseline.budget": b,
                                                                              "param.baseline.seed": s},
                      **{k: v(b, s) for k, v in extra.items()})
                for b in (2, 4) for s in (0, 1)]

    root = tmp_path / "results"
    objectives = {"objectives": [{"metric": "bleu", "mode": "max"}, {"metric": "open_heads", "mode": "min"}]}
    base = {"pretrain": {"checkpoint": str(runs[2])}}
    new = {"baselines": {"finetune_steps": [5]}, "test": {"include": ["old"], "target_removed": 0.875,
                                                               "claims": [{"method": "importance", "against": "random",
                                                                           "by": "mean"}]}, **base,
           **objectives}
    _sweep_folder(root / "new-importance-ft5", "new", ["importance"],
                  budget_rows("n", 4, speedup=lambda b, s: 2.0 - b / 4 + s / 10), new)  # latency.enabled
    old = {"baselines": {"finetune_steps": [0, 3]}, **base, **objectives}
    _sweep_folder(root / "old", "old", ["gates"], [trial("g1", 6, bleu=2.0, open_heads=8)], old)
    _sweep_folder(root / "old-importance-ft3", "old", ["importance"], budget_rows("o", 6), old)
    _sweep_folder(root / "old-importance", "old", ["importance"], budget_rows("u", 2), old)  # untuned: left out
    _sweep_folder(root / "older-random-ft3", "older", ["random"], budget_rows("x", 2), old)  # another sweep

    first, scores = score_sweep(root / "new-importance-ft5", beam=1, log=lambda _: None)
    assert first.path == root / "new-importance-ft5"
    table = scores.table
    assert sorted(set(table["sweep"])) == ["base model", "gates [old]", "importance + 3 steps [old]",
                                           "importance + 5 steps"]
    assert (table[table["sweep"].str.endswith("[old]")][ORIGIN] == "old").all()
    assert (table[~table["sweep"].str.endswith("[old]")][ORIGIN] == "new").all() and (table["method"] == "base").sum() == 1
    assert comparisons(scores).empty  # one method of its own: nothing to compare it with inside the sweep
    points = point_table(scores).set_index(["sweep", "point"])
    assert points.loc[("importance + 5 steps", 2), "speedup"] == pytest.approx(1.55)  # the seeds' mean
    assert points["speedup"].isna().sum() == 2  # the included sweep timed nothing
    against = included_comparisons(scores, samples=100)
    assert against[["budget", "A", "B", "steps A", "steps B", "seeds A", "seeds B"]].values.tolist() == [
        [2, "importance + 5 steps", "importance + 3 steps [old]", 5, 3, 2, 2],
        [4, "importance + 5 steps", "importance + 3 steps [old]", 5, 3, 2, 2]]
    page = comparison_report(first, scores, samples=100)
    assert page.parent == root / "new-importance-ft5" / "report"
    text = (page.parent / "comparison.md").read_text()
    assert "## Against the included sweeps (old): the same method at the same budget" in text
    assert "Target: at least 87.5% of the heads removed within 0.5 BLEU" in text  # the sweep's own target
    assert "When the gate trials' head counts stopped moving" not in text  # no gate trials of its own
    assert "## The sweep's targets among its methods (test.claims)" in text  # read from its sweep.json
    assert "- importance against random: at least matches on the mean: not run" in text  # no random of its own

    said = []
    _, alone = score_sweep(root / "new-importance-ft5", beam=1, log=said.append, include=["old", "never_run", "new"])
    assert len(alone.table) == len(table)  # its own name skipped; one not in the results root left out, and said
    assert any(line.startswith("test set: test.include never_run: left out (") for line in said), said

    old["pretrain"] = {"checkpoint": str(runs[6])}  # the included sweep fine-tuned another base model
    shutil.rmtree(root / "old")
    _sweep_folder(root / "old", "old", ["gates"], [trial("g2", 6, bleu=2.0, open_heads=8)], old)
    with pytest.raises(ScoringError, match="test.include: .*old fine-tuned another base model"):
        score_sweep(root / "new-importance-ft5", beam=1, log=lambda _: None)


def test_the_budget_trials_kept_heads_settle_at_the_first_step_they_never_change_after(tmp_path):
    """From a record's trial logs: the top-k sets of each evaluation, the step from which they stayed the same,
    the heads kept at the end; a trial logged before the budget kept `kept` is left out."""
    import json

    from analysis.load import load_sweep
    from analysis.testset import kept_settled

    folder = tmp_path / "s-gates_budget"
    _sweep_folder(folder, "s", ["gates_budget"], [
        {"trial_id": t, "stage": "prune", "status": "completed", "param.baseline.budget": 2,
         "param.baseline.seed": i} for i, t in enumerate(("a", "b", "old"))], {})
    (folder / "record.json").write_text("{}")

    def gates(*kept):
        return [{"step": 100 * (i + 1), "kept": {"all": list(k)}} for i, k in enumerate(kept)]

    logs = [{"trial_id": "a", "gates": gates((1, 5), (5, 1), (5, 12), (12, 5))},  # settled at 300
            {"trial_id": "b", "gates": gates((3, 4), (4, 3), (3, 4))},  # the same set from the start
            {"trial_id": "old", "gates": [{"step": 100}]}]
    (folder / "trial_logs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in logs))
    got = kept_settled(load_sweep(folder)).set_index("trial_id")
    assert list(got.index) == ["a", "b"]
    assert got.loc["a", ["settled_step", "last_step", "kept"]].tolist() == [300, 400, "all:5 all:12"]
    assert got.loc["b", ["settled_step", "kept"]].tolist() == [100, "all:3 all:4"]


def test_the_sweeps_claims_are_met_or_missed_per_budget_at_equal_fine_tuning():
    """test.claims: gates_budget at least matches importance on the mean where its BLEU is higher, not where it is
    lower; it beats random by interval only where the interval clears 0; the comparison is at the longest
    fine-tuning both have (importance evaluated right after pruning is not its partner), among the sweep's own rows
    (an included sweep's importance is not); a claim about a method the sweep did not run says so."""
    import pandas as pd

    from analysis.load import LABEL
    from analysis.testset import ORIGIN, TEST_BLEU, HeldOutScores, _claim_lines, claim_table
    from sweeps.schema import ClaimConfig

    refs = corpus(200, seed=1)
    rates = {("gates at budget", 3): 0.2, ("gates at budget", 6): 0.1, ("importance", 3): 0.1,
             ("importance", 6): 0.3, ("importance untuned", 3): 0.6, ("importance untuned", 6): 0.6,
             ("random", 3): 0.2, ("random", 6): 0.5, ("importance [old]", 3): 0.9, ("importance [old]", 6): 0.9}
    methods = {"gates at budget": ("gates_budget", 100), "importance": ("importance", 100),
               "importance untuned": ("importance", 0), "random": ("random", 100), "importance [old]": ("importance", 100)}
    rows, stats = [], {}
    for (label, budget), rate in rates.items():
        method, steps = methods[label]
        for seed in (0, 1):
            trial = f"{label}-{budget}-{seed}"
            stats[(label, trial)] = sentence_stats(degrade(refs, rate, seed=budget * 10 + seed + len(label)), refs)
            rows.append({"method": method, LABEL: label, "trial_id": trial, "heads": budget, "budget": budget,
                         "seed": seed, "finetune_steps": steps, TEST_BLEU: 0.0,
                         ORIGIN: "old" if label.endswith("[old]") else "new"})
    scores = HeldOutScores(pd.DataFrame(rows), stats, "open_heads", "new")
    claims = [ClaimConfig("gates_budget", "importance", "mean"), ClaimConfig("gates_budget", "random", "interval"),
              ClaimConfig("gates_budget", "iterative", "interval"), ClaimConfig("importance", "random", "interval")]
    table = claim_table(scores, claims, samples=200)
    got = {(r["claim"].split(":")[0], r.get("budget")): r for _, r in table.iterrows()}
    mean_3, mean_6 = got[("gates_budget against importance", 3)], got[("gates_budget against importance", 6)]
    assert mean_3["verdict"] == "missed" and mean_3["A - B"] < 0  # importance fine-tuned (rate 0.1) is the partner
    assert mean_6["verdict"] == "met" and mean_6["A - B"] > 0
    assert {mean_3["fine-tuning steps"], mean_6["fine-tuning steps"]} == {100}
    close, apart = got[("gates_budget against random", 3)], got[("gates_budget against random", 6)]
    assert close["verdict"] == "missed" and close["95% low"] <= 0 <= close["95% high"]  # the same rate: no interval
    assert apart["verdict"] == "met" and apart["95% low"] > 0
    assert table[table["claim"].str.startswith("gates_budget against iterative")]["verdict"].tolist() == ["not run"]
    lines = _claim_lines(table)
    assert len(lines) == 4
    assert lines[0].startswith("- gates_budget against importance") and "**missed at 3 heads**" in lines[0]
    assert "**missed at 3 heads**" in lines[1] and "6 heads +" in lines[1] and "not run" in lines[2]
    assert "**met at every budget**" in lines[3]
