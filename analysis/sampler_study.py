"""Does the search earn its keep? Samplers compared by complete sweeps, or on a finished sweep used as a lookup
table.

    python -m analysis.sampler_study --sweeps DIR [DIR ...] [--out DIR]         # complete sweeps, one per seed
    python -m analysis.sampler_study RESULTS_DIR [--trials N] [--seeds S] [--samplers tpe random ...] [--out DIR]

**Complete sweeps** (``--sweeps``; ``bench/sampler_study.sh`` runs them): each folder is one finished sweep whose
``sweep.json`` names its sampler and seed. Its trials are taken in the order Optuna suggested them (the trial
numbers of its ``optuna.db``; trials.csv's order without one), and after every trial the hypervolume of the
completed trials so far is recorded against one reference point for all sweeps (just beyond the worst value of
each objective among all their trials). The chart shows each sampler's mean over seeds with its 95% t-interval;
the table gives the final hypervolume and the one after 10 and 20 trials, with intervals, and the trials each seed
needed to reach 90% of the hypervolume of every trial of every sweep together.

Training a fresh trial for every point a sampler proposes would cost a sweep per sampler and seed. Instead the
finished trials of one sweep stand in for the objective: a proposed point gets the objectives of the nearest
finished trial (distance in the search space scaled to [0, 1] per key, on a log scale for loguniform keys; a
``choice`` key must match). Each sampler then runs ``--seeds`` studies of ``--trials`` trials with the sweep's
own objectives and directions, and after every trial the hypervolume of its front so far is recorded (against
one reference point for all: by default just beyond the table's worst value of each objective). The chart shows
the mean and the spread (min to max) over seeds per sampler. Optuna's TPE draws its first 10 points at random
(``n_startup_trials``), so its curve equals random search's until then.

What this measures: how fast a sampler finds the good regions *of this table*. It cannot find a point better
than the best finished trial, and with few finished trials neighbouring proposals share objectives, so the curves
flatten early; a large table (a random or grid sweep with many trials) makes it sharper.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .load import ResultsError, SweepResults, load_sweep
from .pareto import default_reference, hypervolume

SAMPLERS = ("tpe", "random", "nsga2")


class LookupObjective:
    """The objectives of the nearest finished trial, for any point of the sweep's search space."""

    def __init__(self, s: SweepResults) -> None:
        self.space: dict[str, dict[str, Any]] = s.config.get("space") or {}
        if not self.space:
            raise ResultsError(f"{s.path}: sweep.json has no search space; the lookup needs one")
        self.objectives, self.directions = s.objectives, s.directions
        done = s.completed.dropna(subset=list(self.objectives))
        missing = [k for k in self.space if f"param.{k}" not in done.columns]
        if missing:
            raise ResultsError(f"{s.path}: trials.csv lacks the params {', '.join(missing)}")
        if len(done) < 2:
            raise ResultsError(f"{s.path}: {len(done)} completed trials; the lookup needs at least 2")
        self.table = done.reset_index(drop=True)
        self.points = np.stack([self._scale(key, self.table[f"param.{key}"]) for key in self.space], axis=1)

    def _scale(self, key: str, values) -> np.ndarray:
        (kind, args), = self.space[key].items()
        if kind == "choice":  # a categorical: position in the list, compared for equality only
            index = {_choice_key(v): i for i, v in enumerate(args)}
            return np.array([index.get(_choice_key(v), -1) for v in values], dtype=np.float64)
        values = np.asarray(pd.to_numeric(pd.Series(values)), dtype=np.float64)
        low, high = float(args[0]), float(args[1])
        if kind == "loguniform":
            return (np.log(values) - math.log(low)) / (math.log(high) - math.log(low))
        return (values - low) / max(high - low, 1e-12)

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's params, drawn from the sweep's own space."""
        params = {}
        for key, spec in self.space.items():
            (kind, args), = spec.items()
            if kind == "choice":
                params[key] = trial.suggest_categorical(key, list(args))
            elif kind == "randint":
                params[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
            else:
                params[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "loguniform")
        return params

    def nearest(self, params: dict[str, Any]) -> pd.Series:
        x = np.array([self._scale(key, [params[key]])[0] for key in self.space])
        categorical = np.array([next(iter(spec)) == "choice" for spec in self.space.values()])
        diff = np.abs(self.points - x)
        diff[:, categorical] = np.where(diff[:, categorical] > 0, 1e6, 0.0)  # a choice must match
        return self.table.iloc[int(np.argmin((diff ** 2).sum(axis=1)))]

    def __call__(self, trial) -> list[float]:
        row = self.nearest(self.suggest(trial))
        return [float(row[o]) for o in self.objectives]


def _choice_key(v) -> str:
    """One spelling per choice value: a CSV column with a gap reads 512 back as 512.0."""
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    return repr(v)


def _sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"sampler {name!r}: allowed {', '.join(SAMPLERS)}")


def nadir_reference(df: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> list[float]:
    """Just beyond the worst value of each objective among the trials (1% of its range, at least 1e-6): the
    hypervolume then measures the region the trials actually span, not the distance to BLEU 0."""
    ref = []
    for o, d in zip(objectives, directions):
        values = pd.to_numeric(df[o], errors="coerce").dropna()
        margin = max(0.01 * float(values.max() - values.min()), 1e-6)
        ref.append(float(values.min()) - margin if d == "max" else float(values.max()) + margin)
    return ref


def study_curves(s: SweepResults, samplers: Sequence[str] = ("tpe", "random"), trials: int = 30,
                 seeds: int = 5, reference: str = "nadir") -> pd.DataFrame:
    """Hypervolume after each trial: columns sampler, seed, trials, hypervolume. ``reference``: ``nadir`` (just
    beyond the table's worst values) or ``default`` (BLEU 0, one head more than any trial kept)."""
    import optuna

    objective = LookupObjective(s)
    pick = {"nadir": nadir_reference, "default": default_reference}[reference]
    reference = pick(objective.table, objective.objectives, objective.directions)
    rows = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in samplers:
        for seed in range(seeds):
            study = optuna.create_study(directions=["maximize" if d == "max" else "minimize"
                                                    for d in objective.directions], sampler=_sampler(name, seed))
            seen = []
            for n in range(1, trials + 1):
                trial = study.ask()
                values = objective(trial)
                study.tell(trial, values)
                seen.append(dict(zip(objective.objectives, values)))
                rows.append({"sampler": name, "seed": seed, "trials": n,
                             "hypervolume": hypervolume(pd.DataFrame(seen), objective.objectives,
                                                        objective.directions, reference)})
    out = pd.DataFrame(rows)
    out.attrs["table_hypervolume"] = hypervolume(objective.table, objective.objectives, objective.directions,
                                                 reference)
    out.attrs["reference"] = reference
    return out


def summary(curves: pd.DataFrame, fractions: Sequence[float] = (0.9, 0.95, 1.0)) -> pd.DataFrame:
    """Per sampler: the mean final hypervolume and the trials each seed needed to reach a fraction of the table's
    own hypervolume (mean over seeds; seeds that never reach it count as the study's length, and are counted)."""
    full = curves.attrs["table_hypervolume"]
    rows = []
    for name, group in curves.groupby("sampler", sort=False):
        last = group[group["trials"] == group["trials"].max()]["hypervolume"]
        row: dict[str, Any] = {"sampler": name, "seeds": group["seed"].nunique(),
                               "final hypervolume (mean)": last.mean(), "final (sd)": last.std(ddof=1)}
        for f in fractions:
            needed, missed = [], 0
            for _, run in group.groupby("seed"):
                reached = run[run["hypervolume"] >= f * full - 1e-9]["trials"]
                needed.append(int(reached.min()) if len(reached) else int(run["trials"].max()))
                missed += not len(reached)
            row[f"trials to {f:.0%} (mean)"] = float(np.mean(needed))
            row[f"seeds short of {f:.0%}"] = missed
        rows.append(row)
    return pd.DataFrame(rows)


def suggestion_order(s: SweepResults) -> pd.DataFrame:
    """The sweep's trials in the order its Optuna study suggested them (trials.csv's order where it has no study,
    or for trials the study does not know)."""
    from sweeps.results import OPTUNA_FILE, TRIAL_ID

    trials = s.prune.reset_index(drop=True)
    order = {}
    study_file = s.path / OPTUNA_FILE
    if study_file.exists():
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for summary_ in optuna.get_all_study_summaries(f"sqlite:///{study_file}"):
            study = optuna.load_study(study_name=summary_.study_name, storage=f"sqlite:///{study_file}")
            order.update({str(t.user_attrs.get("ray_trial_id")): t.number for t in study.trials})
    rank = [order.get(str(t), len(order) + i) for i, t in enumerate(trials[TRIAL_ID])]
    return trials.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")


def pooled_trials(sweeps: Sequence[SweepResults]) -> tuple[list[str], list[str], pd.DataFrame, list[float]]:
    """Objectives and directions the sweeps share (else an error), their scored trials together, and one
    hypervolume reference point for all of them (just beyond the worst value of each objective)."""
    if not sweeps:
        raise ResultsError("no sweep folders given")
    objectives, directions = sweeps[0].objectives, sweeps[0].directions
    for s in sweeps:
        if s.objectives != objectives or s.directions != directions:
            raise ResultsError(f"{s.path}: objectives {s.objectives} differ from {sweeps[0].path}'s {objectives}")
    pooled = pd.concat([s.completed for s in sweeps], ignore_index=True).dropna(subset=list(objectives))
    if pooled.empty:
        raise ResultsError("no scored trial in the sweeps given")
    return objectives, directions, pooled, nadir_reference(pooled, objectives, directions)


def sweep_curves(sweeps: Sequence[SweepResults]) -> pd.DataFrame:
    """Hypervolume after each trial of complete sweeps (one per sampler and seed): columns sampler, seed, trials,
    hypervolume, against one reference point for all of them."""
    from sweeps.results import SCORED_STATUSES, STATUS

    objectives, directions, pooled, reference = pooled_trials(sweeps)
    rows, seen = [], set()
    for s in sweeps:
        search = s.config.get("search") or {}
        sampler, seed = search.get("sampler"), search.get("seed")
        if sampler is None or seed is None:
            raise ResultsError(f"{s.path}: sweep.json names no search.sampler and search.seed")
        if (sampler, seed) in seen:
            raise ResultsError(f"{s.path}: a second sweep of sampler {sampler} with seed {seed}")
        seen.add((sampler, seed))
        trials = suggestion_order(s)
        for n in range(1, len(trials) + 1):
            done = trials.iloc[:n]
            done = done[done[STATUS].isin(SCORED_STATUSES)].dropna(subset=list(objectives))
            hv = hypervolume(done, objectives, directions, reference) if len(done) else 0.0
            rows.append({"sampler": sampler, "seed": seed, "trials": n, "hypervolume": hv})
    out = pd.DataFrame(rows)
    lengths = out.groupby(["sampler", "seed"])["trials"].max()
    if lengths.nunique() > 1:
        raise ResultsError(f"the sweeps have different numbers of trials ({dict(lengths)}); compare equal counts")
    out.attrs["table_hypervolume"] = hypervolume(pooled, objectives, directions, reference)
    out.attrs["reference"] = reference
    return out


def interval_summary(curves: pd.DataFrame, at: Sequence[int] = (10, 20)) -> pd.DataFrame:
    """Per sampler: mean hypervolume with its 95% t-interval over seeds after ``at`` trials and at the end, and the
    trials each seed needed to reach 90% of the pooled hypervolume."""
    from .stats import t_interval

    full, last = curves.attrs["table_hypervolume"], int(curves["trials"].max())
    rows = []
    for name, group in curves.groupby("sampler", sort=False):
        row: dict[str, Any] = {"sampler": name, "seeds": group["seed"].nunique()}
        for n in [*[n for n in at if n < last], last]:
            mean, half = t_interval(group[group["trials"] == n]["hypervolume"].tolist())
            row[f"hypervolume after {n}"] = mean
            row[f"± (95%) after {n}"] = half
        needed = [int(run[run["hypervolume"] >= 0.9 * full - 1e-9]["trials"].min())
                  if (run["hypervolume"] >= 0.9 * full - 1e-9).any() else math.nan for _, run in group.groupby("seed")]
        row["trials to 90% (mean)"] = float(np.nanmean(needed)) if not all(map(math.isnan, needed)) else math.nan
        row["seeds short of 90%"] = int(sum(map(math.isnan, needed)))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(curves: pd.DataFrame, reference: str = "random", at: Sequence[int] = (10, 20)) -> pd.DataFrame:
    """Each sampler's hypervolume minus the ``reference`` sampler's, paired by seed (the same seed draws the same
    first trials in every sampler), after ``at`` trials and at the end: mean and 95% t-interval over seeds, and
    whether the interval excludes 0."""
    from .stats import t_interval

    last = int(curves["trials"].max())
    base = curves[curves["sampler"] == reference]
    if base.empty:
        return pd.DataFrame()
    rows = []
    for name in [s for s in dict.fromkeys(curves["sampler"]) if s != reference]:
        other = curves[curves["sampler"] == name]
        for n in [*[n for n in at if n < last], last]:
            a = other[other["trials"] == n].set_index("seed")["hypervolume"]
            b = base[base["trials"] == n].set_index("seed")["hypervolume"]
            seeds = sorted(set(a.index) & set(b.index))
            mean, half = t_interval([a[s] - b[s] for s in seeds])
            resolved = "not resolved" if math.isnan(half) or abs(mean) <= half else (
                f"{name} higher" if mean > 0 else f"{reference} higher")
            rows.append({"sampler": name, "minus": reference, "trials": n, "seeds": len(seeds),
                         "difference (mean)": mean, "± (95%)": half, "verdict": resolved})
    return pd.DataFrame(rows)


def curves_chart(curves: pd.DataFrame, band: str = "range"):
    """Hypervolume against finished trials, mean line per sampler with a band: min-max over seeds (``range``) or
    the 95% t-interval of the mean (``ci``) (matplotlib, plotly)."""
    import plotly.graph_objects as go

    from .charts import PALETTE, figure_axes

    fig, ax = figure_axes(figsize=(7, 4.2))
    pfig = go.Figure()
    for i, (name, group) in enumerate(curves.groupby("sampler", sort=False)):
        stats = group.groupby("trials")["hypervolume"].agg(["mean", "min", "max"]).reset_index()
        if band == "ci":
            from .stats import t_interval

            half = group.groupby("trials")["hypervolume"].apply(lambda v: t_interval(v.tolist())[1]).fillna(0.0)
            stats["min"], stats["max"] = stats["mean"] - half.values, stats["mean"] + half.values
        color = PALETTE[i % len(PALETTE)]
        ax.plot(stats["trials"], stats["mean"], color=color, label=f"{name} (mean of {group['seed'].nunique()})")
        ax.fill_between(stats["trials"], stats["min"], stats["max"], color=color, alpha=0.2)
        pfig.add_trace(go.Scatter(x=list(stats["trials"]) + list(stats["trials"][::-1]),
                                  y=list(stats["max"]) + list(stats["min"][::-1]), fill="toself", opacity=0.2,
                                  line={"width": 0}, fillcolor=color, hoverinfo="skip",
                                  name=f"{name} {'95% interval' if band == 'ci' else 'min-max'}"))
        pfig.add_trace(go.Scatter(x=stats["trials"], y=stats["mean"], mode="lines", line={"color": color},
                                  name=f"{name} mean"))
    full = curves.attrs.get("table_hypervolume")
    if full:
        what = "all trials of all sweeps" if band == "ci" else "all finished trials"
        ax.axhline(full, color="black", linestyle="--", linewidth=1, label=what)
        pfig.add_hline(y=full, line_dash="dash", annotation_text=what)
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume of the front")
    ax.legend()
    ax.grid(alpha=0.3)
    pfig.update_layout(xaxis_title="finished trials", yaxis_title="hypervolume of the front",
                       title="Hypervolume against trials (" + ("complete sweeps, mean and 95% interval over seeds)"
                                                               if band == "ci" else "lookup table of a finished sweep)"))
    return fig, pfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.sampler_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default=None,
                        help="a finished sweep's folder (trials.csv + sweep.json), used as a lookup table")
    parser.add_argument("--sweeps", nargs="+", default=None, metavar="DIR",
                        help="complete sweeps instead, one per sampler and seed (their sweep.json names both)")
    parser.add_argument("--trials", type=int, default=30, help="trials per study (default 30)")
    parser.add_argument("--seeds", type=int, default=5, help="studies per sampler (default 5)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"], choices=SAMPLERS)
    parser.add_argument("--reference", choices=("nadir", "default"), default="nadir",
                        help="hypervolume reference: just beyond the table's worst values (default), or BLEU 0 and "
                             "one head more than any trial kept (the report's)")
    parser.add_argument("--out", default=None, help="output folder (default RESULTS/report/sampler_study)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.seeds < 1:
        parser.error("--trials and --seeds must be >= 1")
    if (args.results is None) == (args.sweeps is None):
        parser.error("give either a finished sweep's folder (a lookup table) or --sweeps (complete sweeps)")
    if args.sweeps:
        return _complete_sweeps(args.sweeps, args.out)
    try:
        s = load_sweep(args.results)
        curves = study_curves(s, args.samplers, args.trials, args.seeds, args.reference)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else s.path / "report" / "sampler_study"
    return _write_study(curves, summary(curves), out, "range",
                        f"lookup table: {len(LookupObjective(s).table)} finished trials of {s.path}; hypervolume of "
                        f"all of them")


def _write_study(curves: pd.DataFrame, table: pd.DataFrame, out: Path, band: str, headline: str) -> int:
    """curves.csv, summary.csv and the chart (PNG + HTML) into ``out``; prints the table."""
    from .charts import save

    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False)
    table.to_csv(out / "summary.csv", index=False)
    png, html = save(curves_chart(curves, band=band), out, "hypervolume_vs_trials")
    print(f"{headline} {curves.attrs['table_hypervolume']:.4g} (reference {curves.attrs['reference']})")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"chart: {png} and {html}; curves: {out / 'curves.csv'}")
    return 0


def _complete_sweeps(folders: Sequence[str], out: str | None) -> int:
    try:
        curves = sweep_curves([load_sweep(f) for f in folders])
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = Path(out) if out else Path(folders[0]).parent / "sampler_study"
    status = _write_study(curves, interval_summary(curves), target, "ci",
                          f"{len(folders)} sweeps, {int(curves['trials'].max())} trials each; hypervolume of all "
                          f"their trials together")
    pairs = paired_differences(curves, at=(10, 15, 20, 25))
    if not pairs.empty:
        pairs.to_csv(target / "differences.csv", index=False)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print("\ndifferences against random search, paired by seed:")
            print(pairs.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return status


if __name__ == "__main__":
    sys.exit(main())
