"""Constraints on the gate trials (sweeps/constraints.py): bounds absolute and relative to the base model, the
violations set as Optuna's constraints, the base score measured once, and a real sweep that carries them."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from sweeps.constraints import (
    CONSTRAINTS_FILE,
    Bound,
    base_bounds,
    bounds_for,
    constraint_values,
    feasibility,
    read_bounds,
    violations,
)

C = SimpleNamespace  # a constraint as the schema gives it


def constraint(metric, **bound):
    return C(metric=metric, **{k: bound.get(k) for k in ("min", "max", "min_relative_to_base", "max_relative_to_base")})


def test_bounds_and_their_violations():
    found = bounds_for([constraint("bleu", min_relative_to_base=-0.5), constraint("open_heads", max=12)],
                       {"bleu": 36.0, "chrf": 60.0})
    assert found == [Bound("bleu", "min", 35.5), Bound("open_heads", "max", 12.0)]
    assert violations({"bleu": 35.7, "open_heads": 12}, found) == [pytest.approx(-0.2), 0.0]  # both met
    assert violations({"bleu": 35.0, "open_heads": 13}, found) == [0.5, 1.0]  # both violated, by how much
    assert violations({"bleu": float("nan")}, found) == [math.inf, math.inf]  # no score: infeasible
    with pytest.raises(ValueError, match="relative to the base model: no base score"):
        bounds_for([constraint("bleu", min_relative_to_base=-0.5)], None)
    rows = [{"bleu": 36.0, "open_heads": 4, "base": "h"}, {"bleu": 30.0, "open_heads": 4, "base": "h"}]
    feasibility(rows, {"h": found}, "base")
    assert [r["feasible"] for r in rows] == [True, False]


def test_a_trials_optuna_constraints_are_named_by_their_bounds():
    found = [Bound("bleu", "min", 35.5), Bound("open_heads", "max", 12.0)]
    assert constraint_values({"bleu": 36.0, "open_heads": 14}, found) == {"bleu >= 35.5": -0.5,
                                                                          "open_heads <= 12": 2.0}
    assert constraint_values({}, found) == {"bleu >= 35.5": 1e9, "open_heads <= 12": 1e9}  # no score: infeasible


def test_the_base_model_is_scored_once_per_checkpoint(tmp_path):
    calls = []

    def score(checkpoint):
        calls.append(checkpoint)
        return {"bleu": 30.0 + len(calls)}

    constraints = [constraint("bleu", min_relative_to_base=-1.0)]
    first = base_bounds(str(tmp_path), constraints, {"h": "/base/a.pt"}, score)
    again = base_bounds(str(tmp_path), constraints, {"h": "/base/a.pt"}, score)
    assert first == again == {"h": [Bound("bleu", "min", 30.0)]} and calls == ["/base/a.pt"]
    assert read_bounds(str(tmp_path)) == first
    saved = json.loads((tmp_path / CONSTRAINTS_FILE).read_text())
    assert saved["h"]["base_scores"] == {"bleu": 31.0} and saved["h"]["checkpoint"] == "/base/a.pt"
    moved = base_bounds(str(tmp_path), constraints, {"h": "/base/b.pt"}, score)  # another base model: scored again
    assert moved == {"h": [Bound("bleu", "min", 31.0)]} and calls == ["/base/a.pt", "/base/b.pt"]
    plain = base_bounds(str(tmp_path / "x"), [constraint("open_heads", max=3)], {"": ""}, score)
    assert plain == {"": [Bound("open_heads", "max", 3.0)]} and len(calls) == 2  # absolute: no base score needed


def test_the_dry_run_plan_names_the_constraints():
    from sweeps.plan import describe_plan
    from tests.helpers import tiny_sweep

    plan = describe_plan(tiny_sweep({"constraints": [{"metric": "bleu", "min_relative_to_base": -0.5},
                                                     {"metric": "open_heads", "max": 12}]}))
    assert "constraint: bleu >= the base model's -0.5 (an Optuna constraint)" in plan
    assert "constraint: open_heads <= 12 (an Optuna constraint)" in plan
    timed = describe_plan(tiny_sweep({"latency": {"enabled": True, "batch_sizes": [1, 8]}}))
    assert "latency: each completed trial's pruned model timed against its base model (beam 5, batches [1, 8]," in timed
    assert "latency:" not in plan

@pytest.mark.slow
def test_a_constrained_sweep_that_searches_for_speed(tmp_path):
    """One real sweep for two features (one Ray start): constraints (Optuna gets each trial's violations, the table
    marks feasible trials, the report says so) and latency with speedup as a third objective (every completed
    trial carries its speed-up per batch size, Optuna gets three values, the chart is coloured by it)."""
    import sqlite3

    import pandas as pd

    from tests.helpers import run_cli, write_sweep

    constraints = [{"metric": "bleu", "min_relative_to_base": -100.0}, {"metric": "open_heads", "max": 40}]
    objectives = [{"metric": "bleu", "mode": "max"}, {"metric": "open_heads", "mode": "min"},
                  {"metric": "speedup", "mode": "max"}]
    sweep = write_sweep(tmp_path / "s.yaml", constraints=constraints, objectives=objectives,
                        search={"num_samples": 2, "max_concurrent": 2},
                        latency={"enabled": True, "sentences": 6, "batch_sizes": [1, 3], "beam_size": 2, "rounds": 1})
    proc = run_cli(str(sweep), "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "constraints: scoring the base model" in proc.stdout
    assert "speed-up against the base model (beam 2, output tokens/s): speedup/b1 " in proc.stdout
    folder = tmp_path / "r" / "t"
    saved = json.loads((folder / CONSTRAINTS_FILE).read_text())
    (key, entry), = saved.items()
    assert entry["bounds"][0] == {"metric": "bleu", "sense": "min", "value": entry["base_scores"]["bleu"] - 100.0}
    df = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    prune = df[df["stage"] == "prune"]
    assert len(prune) == 2 and (prune["status"] == "completed").all()
    assert (prune["feasible"] == (prune["open_heads"] <= 40)).all()
    for column in ("speedup", "speedup/b1", "speedup/b3"):
        assert (prune[column] > 0).all(), prune.filter(like="speedup")
    assert (prune["speedup"] == prune["speedup/b3"]).all()
    with sqlite3.connect(folder / "optuna.db") as db:  # each trial's violations, as Optuna's constraints
        found = db.execute("SELECT key, value_json FROM trial_system_attributes WHERE key LIKE 'constraints:%'"
                           ).fetchall()
        values = db.execute("SELECT trial_id, objective, value FROM trial_values").fetchall()
    assert len(found) == 4 and sum(k == "constraints:open_heads <= 40" for k, _ in found) == 2
    heads = sorted(json.loads(v) + 40 for k, v in found if k == "constraints:open_heads <= 40")
    assert heads == sorted(prune["open_heads"].astype(float))
    assert sorted({o for _, o, _ in values}) == [0, 1, 2]  # three objectives told to Optuna
    report = (folder / "report" / "report.md").read_text()
    assert "Constraints: bleu >= " in report and "speedup" in report and (folder / "report" / "pareto.png").exists()
