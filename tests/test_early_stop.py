"""The early-stopping benchmark's analysis (analysis/early_stop.py): hypervolume against trial-steps, and the ratios
with and without MO-ASHA over seeds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.early_stop import at_equal_steps, final_summary, main, ratios, step_curves
from analysis.load import load_sweep


def sweep(folder, kind: str, seed: int, trials: list[tuple[str, int, float, int]], heads_at_rungs: str | None = "l0"):
    """A finished sweep folder: (status, last step, BLEU, heads) per trial, in suggestion order; ``heads_at_rungs``
    None: a sweep recorded before the key existed."""
    folder.mkdir(parents=True)
    rows = [{"trial_id": f"{kind}{seed}_{i}", "stage": "prune", "status": status, "step": step, "bleu": bleu,
             "open_heads": heads} for i, (status, step, bleu, heads) in enumerate(trials)]
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({
        "name": folder.name, "search": {"seed": seed, "scheduler": {"kind": kind, **(
            {"heads_at_rungs": heads_at_rungs} if heads_at_rungs else {})}},
        "objectives": [{"metric": "bleu", "mode": "max"}, {"metric": "open_heads", "mode": "min"}]}))
    return folder


def test_stopped_trials_count_with_what_they_reached_and_their_steps(tmp_path, capsys):
    full = [("completed", 100, 30.0, 20), ("completed", 100, 20.0, 5), ("completed", 100, 10.0, 20)]
    cut = [("completed", 100, 30.0, 20), ("stopped", 10, 19.0, 5), ("stopped", 10, 5.0, 20)]
    folders = [sweep(tmp_path / f"none-{s}", "none", s, full) for s in (0, 1)]
    folders += [sweep(tmp_path / f"asha-{s}", "mo_asha", s, cut) for s in (0, 1)]
    curves = step_curves([load_sweep(f) for f in folders])
    run = curves[(curves["scheduler"] == "mo_asha") & (curves["seed"] == 0)]
    assert run["steps"].tolist() == [100.0, 110.0, 120.0]  # a stopped trial spent only its steps
    # each row is also that trial's record, in suggestion order
    assert run["status"].tolist() == ["completed", "stopped", "stopped"] and run["trial_step"].tolist() == [100, 10, 10]
    assert run["bleu"].tolist() == [30.0, 19.0, 5.0] and run["open_heads"].tolist() == [20, 5, 20]
    assert run["hypervolume"].is_monotonic_increasing and run["hypervolume"].iloc[1] > run["hypervolume"].iloc[0]
    summary = final_summary(curves).set_index("scheduler")
    assert summary.loc["none", "trial-steps"] == 300 and summary.loc["mo_asha", "trial-steps"] == 120
    assert summary.loc["mo_asha", "seeds"] == 2 and summary.loc["mo_asha", "steps ±95%"] == 0
    found = ratios(summary.reset_index())
    assert found["early_stop_steps_ratio"] == pytest.approx(0.4)
    assert found["early_stop_hv_ratio"] < 1 and found["early_stop_hv_intervals_overlap"] is False  # no spread
    # MO-ASHA ranking the head count itself at its rungs (as recorded before heads_at_rungs existed): its own group
    counted = [sweep(tmp_path / f"count-{s}", "mo_asha", s, cut[:2] + [("stopped", 20, 5.0, 20)], heads_at_rungs=h)
               for s, h in ((0, None), (1, "open_heads"))]
    assert set(step_curves([load_sweep(f) for f in counted])["scheduler"]) == {"mo_asha_open_heads"}
    assert main(["--sweeps", *map(str, folders + counted), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "early_stop_steps_ratio=0.4" in out and (tmp_path / "out" / "hypervolume_vs_steps.png").exists()
    assert "early_stop_open_heads_steps_ratio=0.4333" in out  # 130 of 300 trial-steps
    # at equal cost: the full sweep of the same seed had, within MO-ASHA's 120 trial-steps, only its first trial
    table, equal = at_equal_steps(curves)
    assert table["trial-steps"].tolist() == [120.0, 120.0]
    first = curves[(curves["scheduler"] == "none") & (curves["trials"] == 1)]
    assert table["none"].tolist() == first["hypervolume"].tolist()
    assert (table["mo_asha"] > table["none"]).all() and equal["early_stop_equal_steps_hv_ratio"] > 1
    assert equal["early_stop_equal_steps_difference_half"] == 0 and equal["early_stop_equal_steps_apart"] is True
    assert "early_stop_equal_steps_apart=true" in out and "early_stop_open_heads_equal_steps_hv_ratio=" in out
    assert (tmp_path / "out" / "equal_steps_mo_asha.csv").exists()
    # a full sweep's first trial not yet ended within the budget counts as no front at all
    slow = [sweep(tmp_path / f"slow-{s}", "none", s, [("completed", 200, 30.0, 20)] * 2) for s in (0, 1)]
    table, _ = at_equal_steps(step_curves([load_sweep(f) for f in slow + folders[2:]]))
    assert table["none"].tolist() == [0.0, 0.0]
    with pytest.raises(Exception, match="mo_asha seed 1: no sweep without early stopping of the same seed"):
        at_equal_steps(step_curves([load_sweep(f) for f in folders[:1] + folders[2:]]))
    with pytest.raises(Exception, match="second sweep with scheduler none and seed 0"):
        step_curves([load_sweep(folders[0]), load_sweep(folders[0])])


def test_constrained_sweeps_are_judged_by_the_trials_to_the_fewest_heads_feasible_point(tmp_path, capsys):
    from analysis.early_stop import constrained_ratio, trials_to_fewest_feasible

    def constrained(folder, seed, trials):
        sweep(folder, "none", seed, trials)
        config = json.loads((folder / "sweep.json").read_text())
        config["constraints"] = [{"metric": "bleu", "min_relative_to_base": -0.5}]
        (folder / "sweep.json").write_text(json.dumps(config))
        (folder / "constraints.json").write_text(json.dumps({"h": {"base_scores": {"bleu": 30.0}, "bounds": [
            {"metric": "bleu", "sense": "min", "value": 29.5}]}}))
        return folder

    # the fewest-heads feasible point: 4 heads at BLEU >= 29.5 (3 heads exist, but at 20 BLEU)
    plain = [sweep(tmp_path / "none-0", "none", 0, [("completed", 100, 30.0, 20), ("completed", 100, 20.0, 3),
                                                    ("completed", 100, 29.6, 4)]),
             sweep(tmp_path / "none-1", "none", 1, [("completed", 100, 30.0, 20), ("completed", 100, 29.0, 4),
                                                    ("completed", 100, 29.0, 8)])]
    guided = [constrained(tmp_path / "c-0", 0, [("completed", 100, 29.7, 4), ("completed", 100, 20.0, 3),
                                                 ("completed", 100, 1.0, 1)]),
              constrained(tmp_path / "c-1", 1, [("completed", 100, 30.0, 20), ("completed", 100, 29.9, 4),
                                                 ("completed", 100, 1.0, 1)])]
    found, target = trials_to_fewest_feasible([load_sweep(f) for f in plain + guided])
    assert target["open_heads"] == 4.0 and target["bounds"] == "bleu >= 29.5"
    needed = dict(zip(zip(found["scheduler"], found["seed"]), found["trials to the fewest-heads feasible point"]))
    assert needed[("none", 0)] == 3 and pd.isna(needed[("none", 1)])  # never: counted as 3 + 1
    assert needed[("constrained", 0)] == 1 and needed[("constrained", 1)] == 2
    ratio = constrained_ratio(found)
    assert ratio["constrained_trials_ratio"] == pytest.approx(1.5 / 3.5) and ratio["unconstrained_never"] == 1
    # two seeds each: 1.5 +- 12.71 * 0.7071 / sqrt(2) trials against 3.5 +- the same; the intervals overlap
    assert ratio["constrained_trials_half"] == pytest.approx(6.353, abs=1e-3) == ratio["unconstrained_trials_half"]
    assert ratio["constrained_trials_intervals_apart"] is False
    # how close each sweep came: the fewest heads among its feasible trials (none-1: 4 heads at 29.0 is infeasible)
    assert found["fewest heads of its feasible trials"].tolist() == [4.0, 20.0, 4.0, 4.0]
    assert ratio["constrained_fewest_heads_mean"] == 4.0 and ratio["unconstrained_fewest_heads_mean"] == 12.0
    far = found.assign(**{"trials to the fewest-heads feasible point": [3.0, 3.0, 1.0, 1.0]})  # no spread, 2 apart
    assert constrained_ratio(far)["constrained_trials_intervals_apart"] is True
    assert main(["--sweeps", *map(str, plain + guided), "--out", str(tmp_path / "out")]) == 0
    assert "constrained_trials_ratio=0.4286" in capsys.readouterr().out
