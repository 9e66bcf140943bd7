"""One self-contained HTML report per sweep (opens offline, by double-click), a markdown summary, and PNG/HTML
files of every chart.

    python -m analysis.report RESULTS_DIR [RESULTS_DIR ...] [--labels A B ...] [--out DIR]

Each sweep's report goes to ``<sweep>/report/report.html`` (with ``report.md`` and the charts beside it). With
several folders a comparison (their Pareto fronts overlaid, with hypervolumes) goes to ``--out``
(default: the first sweep's report folder) as ``compare.html``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model import metrics as M
from model.checkpoint import CheckpointError
from model.cli import add_out, command_parser
from model.files import atomic_write
from sweeps.constraints import FEASIBLE, read_bounds
from sweeps.results import (
    BASE,
    BEST_BLEU,
    CHECKPOINT,
    LAYOUT_SEED,
    OPTUNA_FILE,
    SIGNATURES,
    STATUS,
    TRIAL_ID,
    WALL_SECONDS,
    checkpoint_file,
)
from sweeps.storage import StorageError

from . import charts
from .attention import attention_chart, attention_maps
from .load import ResultsError, SweepResults, load_sweeps, trial_gates, trial_history, trial_samples
from .pages import REPORT_DIR, Page, markdown_table, publish
from .pareto import default_reference, hypervolume, pareto_front

MAX_GATE_TRIALS = 3  # front trials whose gate maps are shown
MAX_CURVES = 12  # trials drawn in the learning curves


def front_table(s: SweepResults) -> pd.DataFrame:
    front = pareto_front(s.completed, s.objectives, s.directions)
    extra = [c for c in (M.CHRF, BEST_BLEU, M.SPEEDUP) if c not in s.objectives]
    cols = [TRIAL_ID, *s.objectives, *extra, *s.params,
            WALL_SECONDS, CHECKPOINT]
    return front[[c for c in cols if c in front.columns]]


def score_signatures(s: SweepResults) -> str:
    """The sacrebleu signatures of the scores in the table (one per metric when all rows agree)."""
    found = []
    for column in SIGNATURES:
        values = sorted({str(v) for v in s.trials.get(column, pd.Series(dtype=str)).dropna() if str(v)})
        found += [f"{column.split('_')[0].replace('bleu', 'BLEU').replace('chrf', 'chrF')} {v}" for v in values]
    return "; ".join(found) if found else "no sacrebleu signature recorded (a table from before they were)"


def feasible_front(s: SweepResults) -> pd.DataFrame | None:
    """The front of the trials that meet every constraint (``feasible`` in trials.csv); None without constraints."""
    done = s.completed
    if FEASIBLE not in done:
        return None
    ok = done[done[FEASIBLE] == True]  # noqa: E712 - a nullable boolean column
    front = pareto_front(ok, s.objectives, s.directions) if len(ok) else ok
    return front[[c for c in front_table(s).columns if c in front.columns]]


def constraints_line(s: SweepResults, feasible: pd.DataFrame) -> str:
    bounds = read_bounds(s.source)
    said = "; ".join(", ".join(b.describe() for b in found) for found in bounds.values()) or "as recorded"
    count = int((s.completed[FEASIBLE] == True).sum())  # noqa: E712
    return (f"Constraints: {said}. {count} of {len(s.completed)} scored trials meet them all; the feasible front "
            f"has {len(feasible)} (dashed in the chart; trials that violate one are crossed).")


@dataclass
class Report:
    """A written sweep report: its HTML file, the folder of its charts, the front's table and summary values."""

    html: Path
    folder: Path
    front: pd.DataFrame
    values: dict[str, float]
    uploaded: str = ""  # the report folder's URI, for a sweep in remote storage


def sweep_report(s: SweepResults, out: Path | None = None) -> Report:
    """Write the sweep's report folder (``report.html``, ``report.md`` and every chart as PNG and HTML)."""
    out = out or s.path / REPORT_DIR
    page = Page(f"headsweep report: {s.label}")
    counts = s.prune[STATUS].value_counts().to_dict()
    page.p(f"{len(s.prune)} trials ({', '.join(f'{n} {k}' for k, n in counts.items())}); objectives: "
           + ", ".join(f"{o} {d}" for o, d in zip(s.objectives, s.directions)) + f"; results folder {s.source}.")
    table, hv, ref = _front_section(page, s, out)  # 1)
    _gates_section(page, s, table, out)  # 2)
    _curves_section(page, s, out)  # 3)
    _study_section(page, s, out)  # 4)
    page.h("Sweep config")
    page.pre(json.dumps(s.config, indent=2) if s.config else "(no sweep.json)")
    report = page.write(out / "report.html")
    summary = (f"{len(table)} Pareto-optimal of {len(s.completed)} completed trials; hypervolume {hv:.4g} "
               f"(reference {dict(zip(s.objectives, ref))}).")
    md = [f"# headsweep report: {s.label}", "", summary, "", f"Scores: {score_signatures(s)}.", "",
          markdown_table(table.drop(columns=[CHECKPOINT], errors="ignore")), ""]
    feasible = feasible_front(s)
    if feasible is not None:
        md += [constraints_line(s, feasible), "", markdown_table(feasible.drop(columns=[CHECKPOINT], errors="ignore"))
               if len(feasible) else "(no trial meets them)", ""]
    md += [f"Charts: {out}; full report: {report}", ""]
    atomic_write(out / "report.md", "\n".join(md))
    return Report(report, out, table, {"hypervolume": hv, "pareto_trials": len(table),
                                       "completed_trials": len(s.completed)}, publish(s, out))


def _front_section(page: Page, s: SweepResults, out: Path) -> tuple[pd.DataFrame, float, list[float]]:
    """1) The Pareto chart and table, the hypervolume, the scores' signatures, the base models, heads per layer."""
    page.h("Pareto front")
    figs = charts.pareto_chart([s])
    page.plot(figs[1])
    charts.save(figs, out, "pareto")
    table = front_table(s)
    ref = default_reference(s.trials, s.objectives, s.directions)
    hv = hypervolume(s.completed, s.objectives, s.directions, ref) if len(s.completed) else 0.0
    page.p(f"{len(table)} Pareto-optimal of {len(s.completed)} completed trials; hypervolume {hv:.4g} "
           f"against the reference point {dict(zip(s.objectives, ref))}.")
    page.table(table)
    feasible = feasible_front(s)
    if feasible is not None:
        page.h("Constraints", 3)
        page.p(constraints_line(s, feasible))
        page.table(feasible)
    page.p(f"Scores: {score_signatures(s)}.")
    if len(s.bases):
        page.h("Base models", 3)
        page.table(s.bases[[c for c in (BASE, *s.objectives, M.CHRF, M.STEP, WALL_SECONDS, CHECKPOINT)
                            if c in s.bases.columns]])

    layers = charts.layer_chart(s)
    if layers is not None:
        page.h("Heads kept per layer", 3)
        page.p("Each layer's open heads against all open heads of its attention type, one point per completed "
               "trial: the layers whose line falls first lose their heads first as the penalty grows.")
        page.plot(layers[1])
        charts.save(layers, out, "layers")
    return table, hv, ref


def _gates_section(page: Page, s: SweepResults, table: pd.DataFrame, out: Path) -> None:
    """2) The gates of the front's trials, their evolution over the evaluations, translations, attention maps."""
    page.h("Gates of the Pareto-optimal trials")
    for _, row in table.head(MAX_GATE_TRIALS).iterrows():
        trial = s.completed[s.completed[TRIAL_ID] == row[TRIAL_ID]].iloc[0]
        try:
            records = trial_gates(trial)
        except ResultsError as exc:
            page.p(str(exc))
            continue
        caption = f"trial {trial['trial_id']}: " + ", ".join(f"{o} {trial[o]:.4g}" for o in s.objectives)
        page.h(caption, 3)
        figs = charts.gate_heatmap(records[-1], title=f"eval gates at step {records[-1]['step']} ({caption})")
        page.plot(figs[1])
        charts.save(figs, out, f"gates_{trial['trial_id']}")
        gif = charts.gate_evolution_gif(records, out / f"gates_{trial['trial_id']}.gif")
        page.p(f"Evolution over all {len(records)} evaluations:")
        page.image(gif, f"gate evolution of trial {trial['trial_id']}")
        samples = trial_samples(trial)
        if samples:
            page.table(pd.DataFrame(samples))
            try:
                maps = attention_maps(checkpoint_file(trial[CHECKPOINT]), samples[0]["source"])
            except CheckpointError as exc:  # a sweep kept without its weights: the logs above are all there is
                page.p(f"No attention maps: the trial's weights are not in this copy of the sweep ({exc}).")
                continue
            figs = attention_chart(maps)
            page.p("Attention of the remaining heads on the first sample (rows: queries, columns: keys):")
            page.plot(figs[1])
            charts.save(figs, out, f"attention_{trial['trial_id']}")


def _curves_section(page: Page, s: SweepResults, out: Path) -> None:
    """3) Learning curves of the completed trials."""
    page.h("Learning curves")
    histories = {}
    for _, row in s.completed.head(MAX_CURVES).iterrows():
        try:
            histories[str(row[TRIAL_ID])] = trial_history(row)
        except ResultsError:
            continue
    if histories:
        figs = charts.learning_curves(histories)
        page.plot(figs[1])
        charts.save(figs, out, "curves")


def _study_section(page: Page, s: SweepResults, out: Path) -> None:
    """4) Optuna's view of the search: parameter importances and parallel coordinates."""
    db = s.path / OPTUNA_FILE
    if db.exists():
        page.h("Hyperparameter importance and parallel coordinates")
        study = charts.study_charts(f"sqlite:///{db}", s.config.get("name", s.label), s.objectives)
        if not study:
            page.p("Optuna cannot draw these yet (too few finished trials, or no parameter varied).")
        for name, figs in study.items():
            page.plot(figs[1])
            charts.save(figs, out, name)


def seed_hypervolumes(s: SweepResults, ref: Sequence[float]) -> str:
    """Mean ± sd of the hypervolume of each seed's trials alone, for a method with several seeds; else ''."""
    column = "param." + LAYOUT_SEED
    done = s.completed
    if column not in done.columns or done[column].nunique() < 2:
        return ""
    values = pd.Series([hypervolume(group, s.objectives, s.directions, ref) for _, group in done.groupby(column)])
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g} ({len(values)} seeds)"


def compare_report(sweeps: Sequence[SweepResults], out: Path, stem: str = "compare") -> Path:
    """Several sweeps' (or methods') fronts on one chart, with their hypervolumes against one reference point."""
    page = Page("headsweep: " + " vs ".join(s.label for s in sweeps))
    figs = charts.pareto_chart(sweeps)
    page.plot(figs[1])
    charts.save(figs, out, stem)
    first = sweeps[0]
    everything = pd.concat([s.trials for s in sweeps], ignore_index=True)
    ref = default_reference(everything, first.objectives, first.directions)
    rows = [{"sweep": s.label, "completed trials": len(s.completed),
             "front size": len(pareto_front(s.completed, first.objectives, first.directions)),
             "hypervolume": hypervolume(s.completed, first.objectives, first.directions, ref),
             "per seed (mean ± sd)": seed_hypervolumes(s, ref)} for s in sweeps]
    page.p(f"Hypervolume against the common reference point {dict(zip(first.objectives, ref))}. Where a method "
           f"has several seeds (random layouts), its front takes the best seed at each budget; the mean and spread "
           f"of each seed's own hypervolume are the fair figure:")
    page.table(pd.DataFrame(rows))
    return page.write(out / f"{stem}.html")


def main(argv: list[str] | None = None, prog: str = "python -m analysis.report") -> int:
    parser = command_parser(prog, __doc__.split("\n\n")[0], [
        f"{prog} results/quickstart",
        f"{prog} results/a results/b --labels tpe random --out results/compare",
    ])
    parser.add_argument("folders", nargs="+",
                        help="sweep results folders or URIs, e.g. results/quickstart, s3://bucket/prefix/quickstart")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per folder (default: sweep names)")
    parser.add_argument("--test", action="store_true",
                        help="also score each sweep's chosen trials (validation front, every budget point, the base) "
                             "on the test split and compare its methods with intervals: report/comparison.html "
                             "(python -m analysis.testset has the settings)")
    add_out(parser, "one sweep: its report (default <sweep>/report); several: their comparison, compare.html "
                    "(default: the first sweep's report folder; each sweep's own report stays in <sweep>/report)")
    args = parser.parse_args(argv)
    try:
        sweeps = load_sweeps(args.folders, args.labels)
        for s in sweeps:
            own = Path(args.out) if args.out and len(sweeps) == 1 else None
            report = sweep_report(s, own)
            print(f"report: {report.html}" + (f" (uploaded to {report.uploaded})" if report.uploaded else ""))
            if args.test:
                from .testset import ScoringError, comparison_report, held_out_settings, score_sweep

                test = held_out_settings(s.config)
                try:
                    gates, scores = score_sweep(s.source, test.beam_size, test.batch_size,
                                                max_sentences=test.max_sentences)
                except ScoringError as exc:
                    raise ResultsError(str(exc)) from None
                print(f"test-set comparison: {comparison_report(gates, scores, test.bootstrap)}")
        if len(sweeps) > 1:
            out = Path(args.out) if args.out else sweeps[0].path / REPORT_DIR
            page = compare_report(sweeps, out)
            uploaded = publish(sweeps[0], out)
            print(f"comparison: {page}" + (f" (uploaded to {uploaded})" if uploaded else ""))
    except (ResultsError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
