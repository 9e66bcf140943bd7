"""Does early stopping pay? Complete sweeps with and without MO-ASHA (``search.scheduler``), several seeds each:
the hypervolume of the front against the trial-steps spent to reach it.

    python -m analysis.early_stop --sweeps DIR [DIR ...] [--out DIR]     # bench/early_stop.sh runs the sweeps

Each folder is one finished sweep whose ``sweep.json`` names its scheduler and sampler seed. Its trials are taken in
the order Optuna suggested them; after every trial the hypervolume of the scored trials so far (completed, or stopped
at a rung with the scores they reached) is recorded against one reference point for all sweeps, beside the
trial-steps spent so far (the sum of each trial's last step). Per scheduler: the final hypervolume and the total
trial-steps, each with its 95% t-interval over seeds; the ratios with against without early stopping
(``early_stop_hv_ratio``, ``early_stop_steps_ratio``); and whether the two final hypervolumes' intervals overlap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from model import metrics as M
from sweeps.results import TRIAL_ID

from .load import ResultsError, SweepResults, load_sweep
from .pareto import hypervolume
from .sampler_study import nadir_reference, suggestion_order
from .stats import t_interval

NONE = "none"  # a sweep without early stopping (search.scheduler.kind)


def scheduler_of(s: SweepResults) -> tuple[str, Any]:
    """(scheduler kind, sampler seed) a sweep recorded."""
    search = s.config.get("search") or {}
    if "seed" not in search:
        raise ResultsError(f"{s.path}: sweep.json names no search.seed")
    return (search.get("scheduler") or {}).get("kind", NONE), search["seed"]


def step_curves(sweeps: Sequence[SweepResults]) -> pd.DataFrame:
    """Hypervolume and trial-steps after each trial: columns scheduler, seed, trials, steps, hypervolume."""
    if not sweeps:
        raise ResultsError("no sweep folders given")
    objectives, directions = sweeps[0].objectives, sweeps[0].directions
    for s in sweeps:
        if s.objectives != objectives or s.directions != directions:
            raise ResultsError(f"{s.path}: objectives {s.objectives} differ from {sweeps[0].path}'s {objectives}")
    pooled = pd.concat([s.completed for s in sweeps], ignore_index=True).dropna(subset=list(objectives))
    if pooled.empty:
        raise ResultsError("no scored trial in the sweeps given")
    reference = nadir_reference(pooled, objectives, directions)
    rows, seen = [], set()
    for s in sweeps:
        key = scheduler_of(s)
        if key in seen:
            raise ResultsError(f"{s.path}: a second sweep with scheduler {key[0]} and seed {key[1]}")
        seen.add(key)
        trials = suggestion_order(s)
        scored = trials[TRIAL_ID].astype(str).isin(s.completed[TRIAL_ID].astype(str)).to_numpy()
        steps = pd.to_numeric(trials[M.STEP], errors="coerce").fillna(0).cumsum()
        for n in range(1, len(trials) + 1):
            done = trials.iloc[:n][scored[:n]].dropna(subset=list(objectives))
            hv = hypervolume(done, objectives, directions, reference) if len(done) else 0.0
            rows.append({"scheduler": key[0], "seed": key[1], "trials": n, "steps": float(steps.iloc[n - 1]),
                         "hypervolume": hv})
    out = pd.DataFrame(rows)
    out.attrs["reference"] = reference
    out.attrs["pooled_hypervolume"] = hypervolume(pooled, objectives, directions, reference)
    return out


def final_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per scheduler: seeds, final hypervolume and total trial-steps, each mean with its 95% t-interval."""
    last = curves.sort_values("trials").groupby(["scheduler", "seed"], sort=False).tail(1)
    rows = []
    for name, group in last.groupby("scheduler", sort=False):
        hv, hv_half = t_interval(group["hypervolume"].tolist())
        steps, steps_half = t_interval(group["steps"].tolist())
        rows.append({"scheduler": name, "seeds": len(group), "trials": int(group["trials"].max()),
                     "final hypervolume": hv, "hv ±95%": hv_half, "trial-steps": steps, "steps ±95%": steps_half})
    return pd.DataFrame(rows)


def ratios(summary: pd.DataFrame, scheduler: str = "mo_asha") -> dict[str, float | bool]:
    """``scheduler`` against no early stopping: final hypervolume and trial-steps as ratios of the means, and
    whether the final hypervolumes' 95% intervals overlap."""
    by = summary.set_index("scheduler")
    if scheduler not in by.index or NONE not in by.index:
        raise ResultsError(f"need sweeps with scheduler {scheduler!r} and without ('none'); have {list(by.index)}")
    a, b = by.loc[scheduler], by.loc[NONE]
    overlap = (a["final hypervolume"] - a["hv ±95%"] <= b["final hypervolume"] + b["hv ±95%"]
               and b["final hypervolume"] - b["hv ±95%"] <= a["final hypervolume"] + a["hv ±95%"])
    return {"early_stop_hv_ratio": float(a["final hypervolume"] / b["final hypervolume"]),
            "early_stop_steps_ratio": float(a["trial-steps"] / b["trial-steps"]),
            "early_stop_hv_intervals_overlap": bool(overlap)}


def curves_chart(curves: pd.DataFrame):
    """Hypervolume against trial-steps spent, a line per sweep, coloured by scheduler (matplotlib, plotly)."""
    import plotly.graph_objects as go

    from .charts import PALETTE, figure_axes

    fig, ax = figure_axes(figsize=(7, 4.2))
    pfig = go.Figure()
    for i, (name, group) in enumerate(curves.groupby("scheduler", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        for j, (seed, run) in enumerate(group.groupby("seed")):
            label = f"{name} ({group['seed'].nunique()} seeds)" if j == 0 else None
            ax.step(run["steps"], run["hypervolume"], where="post", color=color, alpha=0.7, label=label)
            pfig.add_trace(go.Scatter(x=run["steps"], y=run["hypervolume"], mode="lines", line={"color": color,
                                      "shape": "hv"}, name=f"{name}, seed {seed}", legendgroup=name))
    ax.set_xlabel("trial-steps spent (sum of each trial's steps)")
    ax.set_ylabel("hypervolume of the front")
    ax.legend()
    ax.grid(alpha=0.3)
    pfig.update_layout(xaxis_title="trial-steps spent", yaxis_title="hypervolume of the front",
                       title="Hypervolume against trial-steps, with and without early stopping")
    return fig, pfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.early_stop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", nargs="+", required=True, metavar="DIR",
                        help="complete sweeps, one per scheduler and seed (their sweep.json names both)")
    parser.add_argument("--out", default=None, help="output folder (default: beside the first sweep, early_stop/)")
    args = parser.parse_args(argv)
    try:
        curves = step_curves([load_sweep(f) for f in args.sweeps])
        summary = final_summary(curves)
        found = ratios(summary)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .charts import save

    out = Path(args.out) if args.out else Path(args.sweeps[0]).parent / "early_stop"
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    png, html = save(curves_chart(curves), out, "hypervolume_vs_steps")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"chart: {png} and {html}; curves: {out / 'curves.csv'}")
    for name, value in found.items():
        print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={str(value).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
