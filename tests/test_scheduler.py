"""MO-ASHA (sweeps/scheduler.py): the rungs, the non-dominated ranking, and the scheduler's decisions as Tune asks
for them, kept across a restore."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps.pareto import non_dominated_ranks
from sweeps.scheduler import SCHEDULER_FILE, crowding, keeps, make_scheduler, rungs, stopped_trials


def test_rungs_grow_by_the_reduction_factor_below_the_last_step():
    assert rungs(100, 3, 1000) == [100, 300, 900]
    assert rungs(100, 3, 900) == [100, 300]
    assert rungs(50, 2, 60) == [50]


def test_non_dominated_sorting_and_crowding():
    points = [[1, 1], [2, 0], [0, 2], [0.5, 0.5], [0, 0], [1, 1]]
    assert non_dominated_ranks(points) == [0, 0, 0, 1, 2, 0]  # a duplicate shares its twin's rank
    d = crowding([[0, 3], [1, 2], [3, 0], [2, 1.5]])
    assert math.isinf(d[0]) and math.isinf(d[2]) and d[1] == pytest.approx(2 / 3 + 1.5 / 3)


def test_a_rung_keeps_the_best_third_by_front_then_crowding():
    # BLEU up, heads down (oriented: -heads)
    records = {"a": [30.0, -24.0], "b": [29.0, -12.0], "c": [20.0, -6.0], "d": [28.0, -24.0], "e": [19.0, -12.0]}
    kept = {t for t in records if keeps(records, t, 3)}
    assert kept == {"a", "c"}  # ceil(5/3) = 2 of the front {a, b, c}: its two edges before its middle
    assert {t for t in records if keeps(records, t, 2)} == {"a", "b", "c"}
    assert keeps({"only": [1.0, -3.0]}, "only", 3)  # the first at a rung always goes on


def test_the_scheduler_stops_dominated_trials_at_rungs_and_remembers_after_a_restore(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    objectives = [("bleu", "max"), ("open_heads/enc_self", "min")]
    told = []  # the words a trial at a rung waits for (through Ray's key-value store in a sweep)
    new = lambda: make_scheduler(objectives, 10, 2, 40, str(tmp_path),  # noqa: E731 - rungs at 10, 20
                                 tell=lambda trial, step, go_on: told.append((trial, step, go_on)))
    s = new()
    assert s.rungs == [10, 20]

    def report(scheduler, trial, step, bleu, heads, status="running"):
        decision = scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial), {
            "step": step, "bleu": bleu, "open_heads/enc_self": heads, "status": status})
        assert decision == TrialScheduler.CONTINUE  # a stopped trial ends itself at the rung, on the word
        return told[-1] if told and told[-1][:2] == (trial, step) else None

    assert report(s, "t1", 10, 30.0, 24) == ("t1", 10, True)
    assert report(s, "t1", 15, 30.0, 24) is None  # not a rung: no word
    assert report(s, "t2", 10, 25.0, 24) == ("t2", 10, False)  # dominated by t1: the worse of two at eta 2
    assert report(s, "t3", 10, 20.0, 6) == ("t3", 10, True)  # fewer heads: on the front
    assert report(s, "t4", 10, float("nan"), 6) is None  # no finite score: it ends itself
    assert report(s, "t1", 40, 10.0, 24, status="completed") is None  # its last step: no rung
    assert stopped_trials(str(tmp_path)) == {"t2": 10}
    from ray import cloudpickle  # how Tune keeps the tuner and its scheduler

    assert cloudpickle.loads(cloudpickle.dumps(s))._state is None  # a pickled scheduler reads its records afresh
    restored = new()  # Tune restores the scheduler as it was created: its records come from the folder
    assert report(restored, "t5", 10, 24.0, 24) == ("t5", 10, False)
    assert stopped_trials(str(tmp_path)) == {"t2": 10, "t5": 10}
    assert (tmp_path / SCHEDULER_FILE).exists() and "2 trials stopped" in restored.debug_string()


def test_rungs_rank_the_head_count_by_the_expected_open_heads_which_move_before_a_gate_closes(tmp_path):
    """Early in a trial no gate has closed: every trial has all 24 heads open at evaluation, and ranked by that
    count a rung stops the trial that trades BLEU for pruning (its penalty pushes its gates shut, l0 10). Ranked by
    l0 it is on the front and goes on; a scheduler pickled before the ranking existed ranks by the count."""
    from ray.tune.schedulers import TrialScheduler

    def decisions(ranked_by, folder):
        told = []
        s = make_scheduler([("bleu", "max"), ("open_heads", "min")], 10, 1.5, 40, str(folder), ranked_by=ranked_by,
                           tell=lambda trial, step, go_on: told.append((trial, go_on)))
        if ranked_by is None:
            del s.ranked_by  # as a scheduler restored from a tuner pickled before the attribute existed
        for trial, bleu, l0 in (("t1", 30.0, 23.5), ("t2", 29.5, 23.8), ("t3", 28.0, 10.0)):
            result = {"step": 10, "bleu": bleu, "open_heads": 24, "l0": l0, "status": "running"}
            assert s.on_trial_result(None, SimpleNamespace(trial_id=trial), result) == TrialScheduler.CONTINUE
        return dict(told)

    assert decisions({"open_heads": "l0"}, tmp_path / "l0") == {"t1": True, "t2": True, "t3": True}
    assert decisions({}, tmp_path / "count") == {"t1": True, "t2": True, "t3": False}
    assert decisions(None, tmp_path / "old") == {"t1": True, "t2": True, "t3": False}
    assert stopped_trials(str(tmp_path / "count")) == {"t3": 10} and stopped_trials(str(tmp_path / "l0")) == {}


@pytest.mark.slow
def test_a_sweep_with_mo_asha_stops_trials_at_rungs_and_keeps_what_they_reached(tmp_path):
    """search.scheduler: mo_asha on a real sweep: some trials stop at a rung, each with its checkpoint of that step
    and its real scores, marked stopped in the table and told to Optuna as what they are; the sweep counts them
    finished, and a resume reruns none of them."""
    import json
    import sqlite3

    import pandas as pd

    from tests.helpers import run_cli, wandb_history, wandb_records, write_sweep

    search = {"num_samples": 4, "max_concurrent": 2, "seed": 3,
              "scheduler": {"kind": "mo_asha", "grace_steps": 2, "reduction_factor": 2}}
    sweep = write_sweep(tmp_path / "s.yaml", search=search, wandb={"mode": "offline"},
                        prune={"set": {"gates.mode": "learned", "train.max_steps": 8, "train.eval_every": 2}})
    proc = run_cli(str(sweep), "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "r" / "t"
    df = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    prune = df[df["stage"] == "prune"]
    stopped, completed = prune[prune["status"] == "stopped"], prune[prune["status"] == "completed"]
    assert len(stopped) >= 1 and len(stopped) + len(completed) == 4, prune[["trial_id", "status", "step"]]
    assert (stopped["step"] == stopped["stopped_at"]).all() and set(stopped["stopped_at"]) <= {2, 4}
    assert (completed["step"] == 8).all()
    assert json.loads((folder / "scheduler.json").read_text())["stopped"] == dict(
        zip(stopped["trial_id"], stopped["stopped_at"].astype(int)))
    for _, row in stopped.iterrows():  # its checkpoint is the one of the step it stopped at
        assert int(row["checkpoint"].rstrip("/").rsplit("_", 1)[1]) == int(row["evaluations"]) - 1
        assert sorted((tmp_path / "r" / "t").glob(f"*{row['trial_id']}*/checkpoint_*/step_{int(row['step']):08d}.pt"))
    with sqlite3.connect(folder / "optuna.db") as db:  # told to Optuna with the scores it reached
        states = dict(db.execute("SELECT a.value_json, t.state FROM trials t JOIN trial_user_attributes a "
                                 "ON a.trial_id = t.trial_id WHERE a.key = 'ray_trial_id'").fetchall())
    assert {json.loads(k): v for k, v in states.items() if json.loads(k) in set(stopped["trial_id"])} == {
        t: "COMPLETE" for t in stopped["trial_id"]}
    for _, row in stopped.iterrows():  # a stopped trial ended itself at the rung: its W&B run finished, its rows kept
        run = Path(row["wandb_run"])
        assert any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run)), run
        assert max(r["step"] for r in wandb_history(run) if "bleu" in r) == row["stopped_at"]
    assert "stopped early (MO-ASHA)" in (folder / "report" / "pareto.html").read_text()  # marked on the chart
    assert f"{len(stopped)} stopped" in (folder / "report" / "report.html").read_text()
    again = run_cli(str(sweep), "--results", str(tmp_path / "r"), "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    assert after[after["stage"] == "prune"][["trial_id", "status", "step"]].values.tolist() == prune[
        ["trial_id", "status", "step"]].values.tolist()


def test_the_dry_run_plan_names_the_rungs():
    from sweeps.plan import describe_plan
    from tests.helpers import tiny_sweep

    sweep = tiny_sweep({"search": {"num_samples": 2, "scheduler": {"kind": "mo_asha"}}})
    t = sweep.trial_config({}).train
    assert f"early stopping: MO-ASHA, rungs at steps {rungs(t.eval_every, 3, t.max_steps)}" in describe_plan(sweep)
    assert "early stopping" not in describe_plan(tiny_sweep({"search": {"num_samples": 2}}))
