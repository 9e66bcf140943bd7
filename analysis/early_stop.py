"""Does early stopping pay, and do constraints find the answer sooner? Complete sweeps with and without MO-ASHA
(``search.scheduler``), and with constraints (``constraints``), several seeds each: the hypervolume of the front
against the trial-steps spent to reach it, and the trials needed to find the fewest-heads feasible point.

    python -m analysis.early_stop --sweeps DIR [DIR ...] [--out DIR]     # bench/early_stop.sh runs the sweeps

Each folder is one finished sweep whose ``sweep.json`` names its scheduler and sampler seed. Its trials are taken in
the order Optuna suggested them; after every trial the hypervolume of the scored trials so far (completed, or stopped
at a rung with the scores they reached) is recorded against one reference point for all sweeps, beside the
trial-steps spent so far (the sum of each trial's last step). Per scheduler: the final hypervolume and the total
trial-steps, each with its 95% t-interval over seeds; the ratios with against without early stopping
(``early_stop_hv_ratio``, ``early_stop_steps_ratio``); and whether the two final hypervolumes' intervals overlap.
At equal cost: each early-stopping sweep's final hypervolume against what the sweep without early stopping of the
same sampler seed had reached once it had spent as many trial-steps (the paired difference over seeds with its 95%
t-interval, ``early_stop_equal_steps_hv_ratio``, ``early_stop_equal_steps_difference`` and whether its interval
excludes 0, ``early_stop_equal_steps_apart``): does stopping trials early buy a better front per trial-step?
MO-ASHA sweeps whose rungs ranked the head count itself (``heads_at_rungs: open_heads``) form their own group, with
the same ratios named ``early_stop_open_heads_*``.
With constrained sweeps: under their bounds, the fewest-heads feasible point of all sweeps together, and the trials
each sweep needed to find it, constrained against unconstrained (``constrained_trials_ratio``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from model import metrics as M
from sweeps.results import PARAM_PREFIX, STATUS, TRIAL_ID

from .load import ResultsError, SweepResults, load_sweep
from .pareto import hypervolume
from .sampler_study import pooled_trials, suggestion_order
from .stats import t_interval

NONE = "none"  # a sweep without early stopping (search.scheduler.kind)


CONSTRAINED = "constrained"  # a sweep with constraints (and no early stopping)
FEWEST = "fewest heads of its feasible trials"  # per sweep: how close it came to the answer in its trials
OPEN_HEADS_RUNGS = "mo_asha_open_heads"  # MO-ASHA ranking the head count at its rungs (heads_at_rungs: open_heads)


def scheduler_of(s: SweepResults) -> tuple[str, Any]:
    """(group, sampler seed) a sweep recorded: its scheduler kind (``mo_asha_open_heads`` for MO-ASHA whose rungs
    ranked the head count itself, as every MO-ASHA sweep recorded before ``heads_at_rungs`` existed did), or
    ``constrained`` for a sweep with constraints."""
    search = s.config.get("search") or {}
    if "seed" not in search:
        raise ResultsError(f"{s.path}: sweep.json names no search.seed")
    scheduler = search.get("scheduler") or {}
    kind = scheduler.get("kind", NONE)
    if kind == "mo_asha" and scheduler.get("heads_at_rungs", "open_heads") == "open_heads":
        kind = OPEN_HEADS_RUNGS
    if s.config.get("constraints"):
        if kind != NONE:
            raise ResultsError(f"{s.path}: constraints and early stopping together; compare one change at a time")
        return CONSTRAINED, search["seed"]
    return kind, search["seed"]


def step_curves(sweeps: Sequence[SweepResults]) -> pd.DataFrame:
    """Hypervolume and trial-steps after each trial: columns scheduler, seed, trials, steps, hypervolume, and that
    trial's own record (trial id, status, its last step, its objectives and searched parameters), so that the table
    is also every sweep's trials in suggestion order."""
    objectives, directions, pooled, reference = pooled_trials(sweeps)
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
            trial = trials.iloc[n - 1]
            rows.append({"scheduler": key[0], "seed": key[1], "trials": n, "steps": float(steps.iloc[n - 1]),
                         "hypervolume": hv, TRIAL_ID: str(trial[TRIAL_ID]), STATUS: trial.get(STATUS),
                         "trial_step": trial.get(M.STEP), **{o: trial.get(o) for o in objectives},
                         **{k: trial[k] for k in trials.columns if k.startswith(PARAM_PREFIX)}})
    out = pd.DataFrame(rows)
    out.attrs["reference"] = reference
    out.attrs["pooled_hypervolume"] = hypervolume(pooled, objectives, directions, reference)
    return out


def final_rows(curves: pd.DataFrame) -> pd.DataFrame:
    """Each sweep's row after its last trial."""
    return curves.sort_values("trials").groupby(["scheduler", "seed"], sort=False).tail(1)


def final_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per scheduler: seeds, final hypervolume and total trial-steps, each mean with its 95% t-interval."""
    last = final_rows(curves)
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


def at_equal_steps(curves: pd.DataFrame, scheduler: str = "mo_asha") -> tuple[pd.DataFrame, dict[str, float | bool]]:
    """Per seed: ``scheduler``'s final hypervolume and trial-steps, and the hypervolume the sweep without early
    stopping of the same seed had after its last trial that ended within as many trial-steps (0 before its first).
    Returns that table and the ratio of the means, the mean paired difference with its 95% t half-width, and whether
    that interval excludes 0."""
    last = final_rows(curves)
    rows = []
    for _, run in last[last["scheduler"] == scheduler].iterrows():
        full = curves[(curves["scheduler"] == NONE) & (curves["seed"] == run["seed"])]
        if full.empty:
            raise ResultsError(f"{scheduler} seed {run['seed']}: no sweep without early stopping of the same seed")
        within = full[full["steps"] <= run["steps"]]
        rows.append({"seed": run["seed"], "trial-steps": run["steps"], scheduler: run["hypervolume"],
                     NONE: float(within["hypervolume"].max()) if len(within) else 0.0})
    table = pd.DataFrame(rows).sort_values("seed", ignore_index=True)
    diff, half = t_interval((table[scheduler] - table[NONE]).tolist())
    return table, {"early_stop_equal_steps_hv_ratio": float(table[scheduler].mean() / table[NONE].mean()),
                   "early_stop_equal_steps_difference": float(diff),
                   "early_stop_equal_steps_difference_half": float(half),
                   "early_stop_equal_steps_apart": bool(abs(diff) > half)}


def trials_to_fewest_feasible(sweeps: Sequence[SweepResults]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per sweep: the trials it needed (in suggestion order) to find the fewest-heads feasible point of all the
    sweeps together, under the constrained sweeps' bounds (their constraints.json; every sweep's trials are judged
    by them); NaN where it never did. Returns the table and {bound, heads}."""
    from sweeps.constraints import read_bounds, violations

    bounds = next((b for s in sweeps if scheduler_of(s)[0] == CONSTRAINED
                   for b in read_bounds(s.source).values()), None)
    if not bounds:
        raise ResultsError("no constrained sweep with its bounds (constraints.json) among the sweeps given")
    heads = next(o for o, d in zip(sweeps[0].objectives, sweeps[0].directions) if d == "min")

    def feasible(df: pd.DataFrame) -> pd.Series:
        return pd.Series([all(v <= 0 for v in violations(r, bounds)) for r in df.to_dict("records")], index=df.index,
                         dtype=bool)

    pooled = pd.concat([s.completed for s in sweeps], ignore_index=True)
    ok = pooled[feasible(pooled)] if len(pooled) else pooled
    if ok.empty:
        raise ResultsError(f"no trial of any sweep meets {', '.join(b.describe() for b in bounds)}")
    target = float(pd.to_numeric(ok[heads]).min())
    rows = []
    for s in sweeps:
        group, seed = scheduler_of(s)
        trials = suggestion_order(s)
        scored = trials[TRIAL_ID].astype(str).isin(s.completed[TRIAL_ID].astype(str)).to_numpy()
        ok = scored & feasible(trials).to_numpy()
        hit = ok & (pd.to_numeric(trials[heads]) <= target).to_numpy()
        needed = float(hit.argmax() + 1) if hit.any() else float("nan")
        rows.append({"scheduler": group, "seed": seed, "trials": len(trials),
                     "trials to the fewest-heads feasible point": needed,
                     FEWEST: float(pd.to_numeric(trials[heads])[ok].min()) if ok.any() else float("nan")})
    return pd.DataFrame(rows), {"bounds": ", ".join(b.describe() for b in bounds), heads: target}


def constrained_ratio(found: pd.DataFrame) -> dict[str, float | int | bool]:
    """Mean trials to the fewest-heads feasible point, constrained against unconstrained (a sweep that never got
    there counts as its trial count + 1: a lower bound), each mean's 95% t-interval half-width over seeds, whether
    the two intervals are apart, and how many sweeps of each never got there; and per group the mean fewest heads
    among a sweep's feasible trials, with its half-width (how close the sweeps came, found or not)."""
    column = "trials to the fewest-heads feasible point"
    means, halves, never = {}, {}, {}
    for group in (CONSTRAINED, NONE):
        runs = found[found["scheduler"] == group]
        if runs.empty:
            raise ResultsError(f"no sweep of group {group!r}")
        means[group], halves[group] = t_interval(runs[column].fillna(runs["trials"] + 1).tolist())
        never[group] = int(runs[column].isna().sum())
    apart = bool(abs(means[CONSTRAINED] - means[NONE]) > halves[CONSTRAINED] + halves[NONE])  # NaN: False
    fewest = {g: t_interval(found[found["scheduler"] == g][FEWEST].dropna().tolist()) for g in (CONSTRAINED, NONE)}
    return {"constrained_trials_ratio": means[CONSTRAINED] / means[NONE],
            "constrained_fewest_heads_mean": fewest[CONSTRAINED][0],
            "constrained_fewest_heads_half": fewest[CONSTRAINED][1],
            "unconstrained_fewest_heads_mean": fewest[NONE][0], "unconstrained_fewest_heads_half": fewest[NONE][1],
            "constrained_trials_mean": means[CONSTRAINED], "constrained_trials_half": halves[CONSTRAINED],
            "unconstrained_trials_mean": means[NONE], "unconstrained_trials_half": halves[NONE],
            "constrained_trials_intervals_apart": apart,
            "constrained_never": never[CONSTRAINED], "unconstrained_never": never[NONE]}


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
        sweeps = [load_sweep(f) for f in args.sweeps]
        curves = step_curves(sweeps)
        summary = final_summary(curves)
        found, equal = {}, {}
        for group, prefix in (("mo_asha", "early_stop_"), (OPEN_HEADS_RUNGS, "early_stop_open_heads_")):
            if (summary["scheduler"] == group).any():
                equal[group], at_equal = at_equal_steps(curves, group)
                found.update({k.replace("early_stop_", prefix): v
                              for k, v in {**ratios(summary, group), **at_equal}.items()})
        feasible = None
        if (summary["scheduler"] == CONSTRAINED).any():
            feasible, target = trials_to_fewest_feasible(sweeps)
            found.update(constrained_ratio(feasible))
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
    for group, table in equal.items():
        table.to_csv(out / f"equal_steps_{group}.csv", index=False)
        print(f"at equal trial-steps: {group}'s final hypervolume and what '{NONE}' of the same seed had reached "
              "within as many trial-steps")
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if feasible is not None:
        feasible.to_csv(out / "fewest_feasible.csv", index=False)
        print(f"the fewest-heads feasible point of all sweeps: {target}")
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(feasible.to_string(index=False))
    for name, value in found.items():
        print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={str(value).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
