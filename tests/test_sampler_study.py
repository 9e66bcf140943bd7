"""The sampler study on a hand-made sweep folder: the lookup, the curves and the summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.load import ResultsError, load_sweep
from analysis.pareto import hypervolume
from analysis.sampler_study import LookupObjective, main, study_curves, summary

SPACE = {"gates.penalty": {"loguniform": [0.001, 1.0]}, "data.max_tokens": {"choice": [256, 512]}}
OBJECTIVES = [{"metric": "bleu", "mode": "max"}, {"metric": "open_heads", "mode": "min"}]


def sweep_folder(tmp_path: Path, n: int = 24) -> Path:
    """Trials on a grid of lambda x batch size: more lambda closes more heads and costs BLEU."""
    rows = []
    for i, lam in enumerate(np.geomspace(0.001, 1.0, n // 2)):
        for tokens in (256, 512):
            heads = int(round(24 * (1 - i / (n // 2))))
            bleu = 30.0 - 10.0 * (i / (n // 2)) ** 2 + (1.0 if tokens == 512 else 0.0)
            rows.append({"trial_id": f"{i}-{tokens}", "stage": "prune", "status": "completed",
                         "param.gates.penalty": lam, "param.data.max_tokens": tokens, "bleu": bleu,
                         "open_heads": heads})
    rows.append({"trial_id": "base", "stage": "pretrain", "status": "completed", "bleu": 31.0, "open_heads": 24})
    folder = tmp_path / "s"
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({"name": "s", "space": SPACE, "objectives": OBJECTIVES}))
    return folder


def test_lookup_returns_the_nearest_finished_trial_with_a_matching_choice(tmp_path):
    s = load_sweep(sweep_folder(tmp_path))
    lookup = LookupObjective(s)
    assert len(lookup.table) == 24  # the base model is not a trial
    row = lookup.nearest({"gates.penalty": 0.0011, "data.max_tokens": 512})
    assert row["trial_id"] == "0-512"
    # nearest on a log scale: 0.03 lies between grid points; the choice must match even when another is closer
    lams = sorted(set(lookup.table["param.gates.penalty"]))
    target = math.exp((math.log(lams[5]) * 0.9 + math.log(lams[6]) * 0.1))
    assert lookup.nearest({"gates.penalty": target, "data.max_tokens": 256})["trial_id"] == "5-256"


def test_curves_never_fall_and_stay_below_the_tables_hypervolume(tmp_path):
    s = load_sweep(sweep_folder(tmp_path))
    curves = study_curves(s, ("tpe", "random"), trials=12, seeds=3)
    bleu, heads = s.completed["bleu"], s.completed["open_heads"]
    assert (bleu.min(), heads.max(), heads.min()) == (pytest.approx(30 - 10 * (11 / 12) ** 2), 24, 2)
    assert curves.attrs["reference"] == pytest.approx(  # just beyond the worst trial: 1% of each range
        [bleu.min() - 0.01 * (bleu.max() - bleu.min()), 24 + 0.01 * 22])
    assert len(curves) == 2 * 3 * 12
    full = curves.attrs["table_hypervolume"]
    assert full == pytest.approx(hypervolume(s.completed, ["bleu", "open_heads"], ["max", "min"],
                                             curves.attrs["reference"]))
    for _, run in curves.groupby(["sampler", "seed"]):
        values = run.sort_values("trials")["hypervolume"].to_numpy()
        assert (np.diff(values) >= -1e-12).all() and values[-1] <= full + 1e-9 and values[0] > 0
    table = summary(curves)
    assert list(table["sampler"]) == ["tpe", "random"] and (table["seeds"] == 3).all()
    assert ((table["trials to 90% (mean)"] >= 1) & (table["trials to 90% (mean)"] <= 12)).all()


def test_cli_writes_chart_curves_and_summary_and_refuses_a_folder_without_a_space(tmp_path, capsys):
    folder = sweep_folder(tmp_path)
    assert main([str(folder), "--trials", "5", "--seeds", "2", "--out", str(tmp_path / "out"), "--reference",
                 "default"]) == 0
    for name in ("curves.csv", "summary.csv", "hypervolume_vs_trials.png", "hypervolume_vs_trials.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "trials to 90%" in capsys.readouterr().out
    (folder / "sweep.json").write_text(json.dumps({"name": "s", "objectives": OBJECTIVES}))
    assert main([str(folder)]) == 2
    assert "no search space" in capsys.readouterr().err
    with pytest.raises(ResultsError, match="no search space"):
        LookupObjective(load_sweep(folder))


def complete_sweep(root: Path, sampler: str, seed: int, bleus: list[float], heads: list[int],
                   order: list[int] | None = None) -> Path:
    """A finished sweep folder of one sampler and seed; ``order``: the Optuna trial number of each row."""
    import optuna

    folder = root / f"{sampler}-{seed}"
    folder.mkdir()
    rows = [{"trial_id": f"{sampler}{seed}-{i}", "stage": "prune", "status": "completed", "bleu": b,
             "open_heads": h} for i, (b, h) in enumerate(zip(bleus, heads))]
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({"name": folder.name, "objectives": OBJECTIVES,
                                                   "search": {"sampler": sampler, "seed": seed}}))
    if order is not None:
        study = optuna.create_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}",
                                    directions=["maximize", "minimize"])
        for i in sorted(range(len(rows)), key=lambda i: order[i]):
            trial = study.ask()
            trial.set_user_attr("ray_trial_id", rows[i]["trial_id"])
            study.tell(trial, [bleus[i], heads[i]])
    return folder


def test_complete_sweeps_are_read_in_suggestion_order_against_one_reference(tmp_path):
    from analysis.sampler_study import interval_summary, sweep_curves

    # the best trial is the table's last row but the study's first suggestion: its curve is flat from trial 1
    a = complete_sweep(tmp_path, "tpe", 0, [20.0, 25.0, 30.0], [20, 15, 4], order=[1, 2, 0])
    b = complete_sweep(tmp_path, "tpe", 1, [20.0, 25.0, 30.0], [20, 15, 4])  # no study: the table's order
    c = complete_sweep(tmp_path, "random", 0, [10.0, 12.0, 14.0], [22, 22, 22])
    curves = sweep_curves([load_sweep(p) for p in (a, b, c)])
    ref = curves.attrs["reference"]
    assert ref[0] < 10.0 and ref[1] > 22  # beyond the worst of all sweeps together
    first = curves[(curves["sampler"] == "tpe") & (curves["seed"] == 0)]["hypervolume"].tolist()
    table = curves[(curves["sampler"] == "tpe") & (curves["seed"] == 1)]["hypervolume"].tolist()
    best = hypervolume(pd.DataFrame({"bleu": [30.0], "open_heads": [4]}), ["bleu", "open_heads"], ["max", "min"],
                       ref)
    assert first[0] == pytest.approx(best) and table[0] < first[0] and first[-1] == pytest.approx(table[-1])
    assert all(x <= y + 1e-12 for x, y in zip(table, table[1:]))  # a front never shrinks
    summary_ = interval_summary(curves)
    tpe = summary_[summary_["sampler"] == "tpe"].iloc[0]
    assert tpe["seeds"] == 2 and tpe["hypervolume after 3"] == pytest.approx(best)  # both seeds end on the same front
    assert summary_[summary_["sampler"] == "random"]["seeds short of 90%"].iloc[0] == 1
    from analysis.sampler_study import paired_differences

    pairs = paired_differences(curves, at=(1,))
    assert list(pairs["trials"]) == [1, 3] and (pairs["seeds"] == 1).all()  # tpe and random share seed 0 only
    assert pairs["difference (mean)"].iloc[-1] == pytest.approx(
        first[-1] - curves[curves["sampler"] == "random"]["hypervolume"].iloc[-1])
    assert (pairs["verdict"] == "not resolved").all()  # one pair: no interval
    with pytest.raises(ResultsError, match="different numbers of trials"):
        short = complete_sweep(tmp_path, "nsga2", 0, [20.0], [20])
        sweep_curves([load_sweep(p) for p in (a, short)])
