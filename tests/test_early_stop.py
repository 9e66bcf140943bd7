"""The early-stopping benchmark's analysis (analysis/early_stop.py): hypervolume against trial-steps, and the ratios
with and without MO-ASHA over seeds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.early_stop import final_summary, main, ratios, step_curves
from analysis.load import load_sweep


def sweep(folder, kind: str, seed: int, trials: list[tuple[str, int, float, int]]):
    """A finished sweep folder: (status, last step, BLEU, heads) per trial, in suggestion order."""
    folder.mkdir(parents=True)
    rows = [{"trial_id": f"{kind}{seed}_{i}", "stage": "prune", "status": status, "step": step, "bleu": bleu,
             "open_heads": heads} for i, (status, step, bleu, heads) in enumerate(trials)]
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({
        "name": folder.name, "search": {"seed": seed, "scheduler": {"kind": kind}},
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
    assert run["hypervolume"].is_monotonic_increasing and run["hypervolume"].iloc[1] > run["hypervolume"].iloc[0]
    summary = final_summary(curves).set_index("scheduler")
    assert summary.loc["none", "trial-steps"] == 300 and summary.loc["mo_asha", "trial-steps"] == 120
    assert summary.loc["mo_asha", "seeds"] == 2 and summary.loc["mo_asha", "steps ±95%"] == 0
    found = ratios(summary.reset_index())
    assert found["early_stop_steps_ratio"] == pytest.approx(0.4)
    assert found["early_stop_hv_ratio"] < 1 and found["early_stop_hv_intervals_overlap"] is False  # no spread
    assert main(["--sweeps", *map(str, folders), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "early_stop_steps_ratio=0.4" in out and (tmp_path / "out" / "hypervolume_vs_steps.png").exists()
    with pytest.raises(Exception, match="second sweep with scheduler none and seed 0"):
        step_curves([load_sweep(folders[0]), load_sweep(folders[0])])
