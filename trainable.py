"""The entry point: the Ray Tune function trainables of a sweep, and the ``headsweep`` command.

    headsweep sweep SWEEP.yaml [--resume] [--smoke-test] [--dry-run] [--address ADDR] [--results DIR] [--set k=v ...]
    python trainable.py SWEEP.yaml ...          (the same as ``headsweep sweep``)

1. The sweep YAML is loaded and validated (``sweeps.validate``); nothing starts if it is wrong, and ``--dry-run``
   prints the resolved plan and stops there.
2. Stage ``pretrain``: each distinct base model (one per value of searched model/corpus keys) is trained once as a
   one-trial Tune experiment under ``<results>/pretrained/base-<hash>`` and reused by every later sweep with the
   same base config.
3. Stage ``prune``: Optuna (multi-objective; its study in ``<results>/<sweep>/optuna.db``) proposes the trials;
   each loads its base model, learns gates with the L0 penalty and reports every evaluation with a checkpoint.
4. ``<results>/<sweep>/trials.csv`` (``sweeps.results``): one row per trial; the Pareto-optimal trials are
   printed, the report written (``analysis.report``) and, with W&B on, logged as the sweep's summary run.
5. With ``method: [gates, importance, random, scratch]`` the baselines follow, each a grid in its own folder
   ``<results>/<sweep>-<method>[-ft<N>]`` (``sweeps.baselines``); ``<sweep>/report/methods.html`` compares them.

Calls go downward: this module -> ``sweeps.tuner.run_sweep`` -> Tune -> a trainable below ->
``sweeps.trial.run_trial`` -> ``model.train``. ``model/`` runs without Ray, Optuna or W&B.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from model import metrics as M
from model.checkpoint import CheckpointError
from model.cli import add_data_dir, add_set, command_parser, data_dir
from model.config import ConfigError
from model.corpora import CorpusError
from model.train import TrainingError
from sweeps.baselines import parse_layout_name, pruned_start
from sweeps.plan import describe_plan
from sweeps.raycluster import ClusterError
from sweeps.results import (
    BASE,
    BUDGET,
    GATES_FILE,
    LAYOUT,
    LAYOUT_SEED,
    NODE,
    PARAM_PREFIX,
    PRETRAIN,
    PRUNE,
    SAMPLES_FILE,
    SCORED_STATUSES,
    STAGE,
    STATUS,
    TRIAL_ID,
    TRIALS_FILE,
    WANDB_RUN,
    checkpoint_file,
    join_storage,
    last_record,
    uri_of,
)
from sweeps.resume import SweepError
from sweeps.scheduler import TrialStopped, await_decision, rungs
from sweeps.schema import GATES, SCRATCH, MethodRun
from sweeps.scratch import trial_scratch
from sweeps.storage import is_uri, upload
from sweeps.sweep import Sweep, base_hash
from sweeps.trial import run_trial
from sweeps.tuner import Trainables, TrialSetup, expected_trials, run_sweep, unfinished_trials
from sweeps.validate import load_sweep
from sweeps.wandb_log import TrialLogger

# --------------------------------------------------------------------------------------------------
# The trainables (run inside Ray workers)


def _trial_log(msg: str) -> None:
    if not msg.startswith("  src:"):  # samples go to samples.jsonl and W&B
        print(msg.split("\n", 1)[0], flush=True)


def _quiet_termination() -> None:
    """Ray stops a finished trial's worker with SIGTERM, and its handler raises SystemExit wherever the main thread
    is; when that is a weakref callback or a ``__del__``, Python reports the exit as "Exception ignored ...
    Traceback ... SystemExit: 1" and goes on until Ray kills the process. That report is noise in a successful
    sweep: this worker's unraisable hook drops a SystemExit (any other unraisable error is reported as before)."""
    previous = sys.unraisablehook
    if getattr(previous, "headsweep", False):
        return

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook.headsweep = True
    sys.unraisablehook = hook


def _scratch_dir():
    """The run's own folder lies outside the trial folder (Ray copies the trial folder to the storage): everything
    worth keeping leaves with the reports, so the scratch folder goes when the trial ends; those of killed trials
    on this node go when the next trial starts here (sweeps/scratch.py)."""
    from ray import tune

    return trial_scratch(tune.get_context().get_trial_id())


def _run(setup: TrialSetup, stage: str, base_key: str, params: dict[str, Any], cfg, init_from: str | None,
         scratch: Path, method: str = GATES, base: str | None = None) -> None:
    """Shared body of the trainables: restore, train ``cfg`` (from ``init_from``'s weights when fresh; None: random
    initialisation; with ``distill``, learning from ``base``, the unpruned base model), report every evaluation to
    Tune (with its checkpoint folder) and W&B."""
    from ray import tune

    _quiet_termination()
    ctx = tune.get_context()
    sweep = setup.sweep
    restore = tune.get_checkpoint()
    logger = TrialLogger(
        setup.wandb_mode, sweep.schema.wandb.project, sweep.wandb_group,
        run_id=f"{sweep.name}-{ctx.get_trial_id()}", name=ctx.get_trial_name(),
        directory=setup.wandb_dir or ctx.get_trial_dir(), entity=sweep.schema.wandb.entity,
        tags=sweep.schema.wandb.tags, job_type=stage if stage == PRETRAIN else method,
        init_timeout=sweep.schema.wandb.init_timeout, upload_timeout=sweep.schema.wandb.upload_timeout,
        config={**params, "stage": stage, "method": method, "base": base_key, "config": cfg.to_dict(),
                **setup.provenance},
        log=_trial_log,
    )
    constant = {"stage": stage, "method": method, "base": base_key, "seed": cfg.train.seed,
                WANDB_RUN: _in_storage(logger.path, ctx), NODE: _node_id(), **setup.provenance}

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        if folder is not None and base is not None and sweep.schema.latency.enabled and stage != PRETRAIN \
                and metrics.get(M.STATUS) == M.COMPLETED:  # the last evaluation: time the pruned model
            metrics = {**metrics, **_speedup(sweep, cfg, folder, base)}
        record = {**{o.metric: math.nan for o in sweep.objectives}, **metrics, **constant}  # NaN: Optuna FAIL
        if folder is None:
            tune.report(record)
            return
        tune.report(record, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        gates, samples = last_record(folder / GATES_FILE), last_record(folder / SAMPLES_FILE)
        logger.log(metrics, step=int(metrics[M.STEP]), gates=(gates or {}).get("gates"),
                   samples=(samples or {}).get("samples"))
        if int(metrics[M.STEP]) in rung_steps and metrics.get(M.STATUS) == M.RUNNING \
                and await_decision(ctx.get_trial_id(), int(metrics[M.STEP])):
            raise TrialStopped

    c = sweep.search.scheduler  # MO-ASHA: at a rung the trial hears whether it goes on
    rung_steps = set(rungs(c.grace_steps or cfg.train.eval_every, c.reduction_factor, cfg.train.max_steps)) \
        if c.kind == "mo_asha" and stage == PRUNE and method == GATES else set()

    def train_log(record: dict[str, Any]) -> None:  # W&B's step axis is the optimizer step
        logger.log(record, step=int(record[M.STEP]))

    try:
        run_dir = scratch / "run"
        if restore is not None:
            with restore.as_directory() as folder:
                run_trial(cfg, run_dir, report, restore_from=folder, log=_trial_log, teacher=base, on_log=train_log)
        else:
            run_trial(cfg, run_dir, report, init_from=init_from, log=_trial_log, teacher=base, on_log=train_log)
    except TrialStopped:  # told to stop at a rung: its last report stands, its W&B run is finished
        _trial_log("stopped at a rung by MO-ASHA (search.scheduler)")
    except CorpusError as exc:  # a corpus this node lacks (and cannot download): say which node
        logger.finish(exit_code=1)
        raise CorpusError(f"on node {_node()}: {exc}") from None
    except BaseException:
        logger.finish(exit_code=1)
        raise
    logger.finish()
    if sweep.search.reuse_actors:  # otherwise Tune copies the trial folder, W&B run included, as the trial ends
        _persist_run(logger.path, ctx)
    gc.collect()  # a reused worker (search.reuse_actors) starts its next trial without this one's model in memory


def _speedup(sweep, cfg, folder: Path, base: str) -> dict[str, Any]:
    """latency.enabled: the trial's final model, physically pruned, against its base model (model/latency.py), on
    the trial's device and threads."""
    from model.latency import checkpoint_speedup
    from model.train import pick_device

    lat = sweep.schema.latency
    found = checkpoint_speedup(str(checkpoint_file(folder)), base, cfg.eval.split, lat.sentences, lat.batch_sizes,
                               lat.beam_size, lat.rounds, str(pick_device(cfg.train)), cfg.data.data_dir,
                               log=lambda _: None)
    _trial_log(f"speed-up against the base model (beam {lat.beam_size}, output tokens/s): "
               + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))
    return found


def _node_id() -> str:
    """This worker's Ray node: its id (first 12 hex digits) and address."""
    import ray

    return f"{ray.get_runtime_context().get_node_id()[:12]}@{ray.util.get_node_ip_address()}"


def _node() -> str:
    import socket

    import ray

    return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"


def _persist_run(path: str, ctx) -> None:
    """A reused worker's (search.reuse_actors) finished offline W&B run in the trial's folder, copied now to the
    sweep's remote storage (where trials.csv says it lies): the worker goes on to the next trial and leaves the
    trial folder to Tune's copy at the end of the experiment, which was seen to miss the last runs on S3."""
    stored = _in_storage(path, ctx)
    if stored != path and is_uri(stored) and Path(path).is_dir():
        upload(path, stored)


def _in_storage(path: str, ctx) -> str:
    """Where a file of the trial's own folder (an offline W&B run) lies once Tune has copied the folder to the
    sweep's storage (on a cluster the worker's disk may be gone by the time anyone reads it)."""
    trial_dir = ctx.get_trial_dir()
    if not path or not Path(path).is_absolute() or not Path(path).is_relative_to(trial_dir):
        return path  # online: entity/project/id; or a run folder outside the trial's (local storage)
    storage = ctx.get_storage()
    return join_storage(uri_of(storage.storage_filesystem, storage.trial_fs_path),
                        Path(path).relative_to(trial_dir).as_posix())


def _base_file(source: str | None, scratch: Path) -> str | None:
    """The training checkpoint of a base model: a .pt file, a Tune checkpoint folder, or one in the cloud."""
    from ray import tune

    if source is None or source.endswith(".pt"):
        return source
    if "://" not in source:  # a folder on this (or a shared) filesystem
        return str(checkpoint_file(source))
    local = scratch / "base"
    tune.Checkpoint(source).to_directory(str(local))
    return str(checkpoint_file(local))


def pretrain_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """One base model (gates absent or open), its resources from ``pretrain.resources``."""
    cfg = setup.sweep.base_config(params)
    with _scratch_dir() as scratch:
        _run(setup, PRETRAIN, base_hash(cfg), params, cfg, None, scratch)


def prune_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Optuna trial: the base model (if any) with learned gates and the L0 penalty."""
    sweep = setup.sweep
    cfg = sweep.trial_config(params)
    key = base_hash(sweep.base_config(params)) if sweep.pretraining else ""
    with _scratch_dir() as scratch:
        base = _base_file(setup.bases[key], scratch) if sweep.pretraining else None
        _run(setup, PRUNE, key, params, cfg, base, scratch, base=base)


def layout_trainable(params: dict[str, Any], setup: TrialSetup, run: MethodRun) -> None:
    """importance/iterative/random: the base model pruned to ``baseline.budget`` heads, evaluated or fine-tuned."""
    sweep = setup.sweep
    key = base_hash(sweep.base_config())
    seed = int(params.get(LAYOUT_SEED, 0))
    with _scratch_dir() as scratch:
        start = scratch / "pruned_start.pt"
        b = sweep.schema.baselines
        base = _base_file(setup.bases[key], scratch)
        cfg = pruned_start(base, sweep.baseline_config(run.finetune_steps, params, run.method), run.method,
                           int(params[BUDGET]), seed, b.importance_batches, start, log=_trial_log,
                           sample_seed=sweep.sample_seed(seed), fraction=b.iterative_fraction)
        _run(setup, PRUNE, key, params, cfg, str(start), scratch, method=run.method, base=base)


def gates_budget_trainable(params: dict[str, Any], setup: TrialSetup, run: MethodRun) -> None:
    """gates_budget: the base model with learned gates ending at ``baseline.budget`` heads (gates.target_open),
    fine-tuned as long as the baselines with their recipe."""
    sweep = setup.sweep
    key = base_hash(sweep.base_config())
    cfg = sweep.gates_budget_config(params)
    with _scratch_dir() as scratch:
        base = _base_file(setup.bases[key], scratch)
        _run(setup, PRUNE, key, params, cfg, base, scratch, method=run.method, base=base)


def scratch_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """scratch: a gate trial's head layout trained from random initialisation with the base model's recipe."""
    sweep = setup.sweep
    cfg = sweep.scratch_config(parse_layout_name(params[LAYOUT]), int(params.get(LAYOUT_SEED, 0)))
    with _scratch_dir() as scratch:
        _run(setup, PRUNE, base_hash(sweep.base_config()), params, cfg, None, scratch, method=SCRATCH)


TRAINABLES = Trainables(pretrain=pretrain_trainable, prune=prune_trainable, layout=layout_trainable,
                        scratch=scratch_trainable, gates_budget=gates_budget_trainable)


# --------------------------------------------------------------------------------------------------
# After the sweep: the front, the report, the W&B summary


def print_pareto(sweep: Sweep, df, label: str | None = None) -> None:
    import pandas as pd

    from analysis.pareto import pareto_front

    if label:
        print(f"\n== {label}")
    done = df[(df[STAGE] == PRUNE) & df[STATUS].isin(SCORED_STATUSES)]
    objectives, directions = [o.metric for o in sweep.objectives], [o.mode for o in sweep.objectives]
    counts = df[df[STAGE] == PRUNE][STATUS].value_counts().to_dict()
    print(f"\ntrials: {sum(counts.values())} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    for _, base in df[df[STAGE] == PRETRAIN].iterrows():
        print(f"base model {base[BASE]}: BLEU {base[M.BLEU]:.2f}, open heads {base[M.OPEN_HEADS]}")
    if done.empty:
        print("no completed trial: no Pareto front")
        return
    front = pareto_front(done, objectives, directions)
    cols = objectives + [c for c in df.columns if c.startswith(PARAM_PREFIX)] + [TRIAL_ID]
    print(f"Pareto-optimal trials ({len(front)} of {len(done)} completed; "
          + ", ".join(f"{o} {d}" for o, d in zip(objectives, directions)) + "):")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(front[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


def write_reports(sweep: Sweep, tables: dict[MethodRun, Any]) -> None:
    """The gate sweep's report (and its W&B summary run), and with several methods their fronts compared."""
    from analysis.load import load_sweep as load_results
    from analysis.load import load_sweeps
    from analysis.pages import REPORT_DIR, publish
    from analysis.report import compare_report, sweep_report
    from sweeps.wandb_log import log_sweep_summary

    try:
        for run in tables:
            if run.method == GATES:
                report = sweep_report(load_results(sweep.experiment_dir))
                print(f"\nreport: {report.html}" + (f" (uploaded to {report.uploaded})" if report.uploaded else ""))
                log_sweep_summary(sweep, report.folder, report.front, report.values)
        if len(tables) > 1:
            sweeps = load_sweeps([join_storage(sweep.storage, run.name) for run in tables],
                                 [run.label for run in tables])
            methods = compare_report(sweeps, sweeps[0].path / REPORT_DIR, stem="methods")
            uploaded = publish(sweeps[0], sweeps[0].path / REPORT_DIR)
            print(f"methods compared: {methods}" + (f" (uploaded to {uploaded})" if uploaded else ""))
    except Exception as exc:
        print(f"\nthe report failed ({type(exc).__name__}: {exc}); the results are intact: "
              f"headsweep report {sweep.experiment_dir}", file=sys.stderr)


def score_test_set(sweep: Sweep) -> None:
    """test.enabled: once every method has finished, score what validation chose on the test split, on the
    driver (a GPU when it has one), and write the comparison with intervals (analysis.testset)."""
    import torch

    from analysis.testset import comparison_report, score_sweep

    t = sweep.schema.test
    folder = join_storage(sweep.storage, sweep.method_runs()[0].name)  # any of its folders: the first it has
    try:
        device = "cuda" if sweep.resources.gpus > 0 and torch.cuda.is_available() else "cpu"
        first, scores = score_sweep(folder, t.beam_size, t.batch_size, device, max_sentences=t.max_sentences)
        page = comparison_report(first, scores, t.bootstrap)
        print(f"\ntest-set comparison: {page}", flush=True)
    except Exception as exc:
        print(f"\nthe test-set scoring failed ({type(exc).__name__}: {exc}); the results are intact: "
              f"python -m analysis.testset {folder}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Commands


def main(argv: list[str] | None = None, prog: str = "python trainable.py") -> int:
    parser = command_parser(prog, "Sweep the L0 penalty (and whatever the sweep names) with Ray Tune + Optuna.", [
        f"{prog} sweeps/quickstart.yaml",
        f"{prog} sweeps/quickstart.yaml --dry-run",
        f"{prog} sweeps/quickstart.yaml --resume",
        f"{prog} sweeps/multi30k_en_de.yaml --data-dir ../shared/data --set search.num_samples=20 --set name=m20",
        f"{prog} sweeps/wmt_en_ru.yaml --smoke-test --results /data/sweeps",
    ])
    parser.add_argument("sweep", help="sweep YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (and its base models)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="the same sweep, tiny: 2 trials x 2 evaluations of a small model (into <name>-smoke)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved sweep (space, objectives, trials, stages, base models and whether "
                             "they are trained already) and exit without starting Ray")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: $RAY_ADDRESS, else a cluster started on this node with "
                             "`ray start`, as `ray up` does on its head; else a private local Ray)")
    parser.add_argument("--local", action="store_true",
                        help="start a private local Ray even where a cluster runs on this node")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="results root, a folder or s3://bucket/prefix (default: the sweep's storage)")
    add_data_dir(parser)
    add_set(parser, "sweep", "search.num_samples=20")
    parser.add_argument("--no-report", action="store_true",
                        help="leave out the report (and the W&B summary run) at the end; write it later with "
                             "`headsweep report RESULTS/NAME`")
    parser.add_argument("--dashboard", action="store_true", help="local Ray: serve the dashboard (on 127.0.0.1)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", metavar="ADDRESS",
                        help="with --dashboard: the address it listens on (0.0.0.0: every network interface; "
                             "anyone who reaches it can submit jobs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for name in ("HEADSWEEP_DATA", "HEADSWEEP_CACHE"):  # trials run in Tune's trial folder: no relative paths
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.path.expanduser(os.environ[name]))
    try:
        sweep = load_sweep(args.sweep, args.overrides, smoke_test=args.smoke_test, storage=args.results,
                           data_dir=data_dir(args))
        if args.dry_run:
            print(describe_plan(sweep))
            return 0
        tables = run_sweep(sweep, TRAINABLES, resume=args.resume, address=args.address, dashboard=args.dashboard,
                           dashboard_host=args.dashboard_host, local=args.local)
    except (ConfigError, SweepError, ClusterError, TrainingError, CheckpointError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run, df in tables.items():
        print_pareto(sweep, df, run.label if len(tables) > 1 else None)
    if args.no_report:
        print(f"\nno report (--no-report): headsweep report {sweep.experiment_dir}")
    else:
        write_reports(sweep, tables)
    if sweep.schema.test.enabled and not any(unfinished_trials(sweep, run, df) for run, df in tables.items()) \
            and len(tables) == len(sweep.method_runs()):
        score_test_set(sweep)
    print(f"\nsweep {sweep.name} took {time.perf_counter() - start:.0f} s; results: "
          + ", ".join(join_storage(sweep.storage, run.name) for run in tables)
          + f" (table: {TRIALS_FILE} in each)")
    short = [f"{unfinished_trials(sweep, run, df)} of {expected_trials(sweep, run, df)} {run.label} trials"
             for run, df in tables.items() if unfinished_trials(sweep, run, df)]
    unreached = [run.label for run in sweep.method_runs() if run not in tables]  # stopped before them
    if short or unreached:
        command = list(sys.argv[1:] if argv is None else argv)
        command += [] if "--resume" in command else ["--resume"]
        said = [f"{', '.join(short)} did not finish"] if short else []
        said += [f"not reached: {', '.join(unreached)}"] if unreached else []
        print(f"{'; '.join(said)}; continue the sweep with: {prog} {' '.join(command)}")
        return 1
    return 0


# headsweep <command>: the module whose main(argv, prog) runs it, and what it does
COMMANDS = {
    "sweep": ("trainable", "a sweep: base models, Optuna trials with gates, baselines, report"),
    "train": ("model.train", "one training run (no Ray)"),
    "translate": ("model.translate", "translate stdin with a checkpoint"),
    "evaluate": ("model.evaluate", "BLEU and chrF of a checkpoint on a held-out split"),
    "average": ("model.average", "average checkpoints' weights"),
    "prune": ("model.prune", "remove a gated model's closed heads: a smaller plain model"),
    "export": ("analysis.export", "the Pareto-optimal trials of a sweep as pruned models"),
    "report": ("analysis.report", "a sweep's report, or several sweeps' fronts compared"),
    "writeup": ("analysis.writeup", "rewrite a write-up's sections generated from a sweep's report"),
    "record": ("sweeps.record", "keep a finished sweep folder as a record: table, logs, test scores, reports"),
}


def cli(argv: list[str] | None = None) -> int:
    """``headsweep <command> ...``: every command of the project under one name."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: headsweep <command> [options]   (headsweep <command> --help for each)\n\ncommands:\n"
              + "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
              + "\n\nexamples:\n  headsweep sweep sweeps/quickstart.yaml\n  headsweep report results/quickstart",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = sys.modules[__name__] if COMMANDS[argv[0]][0] == "trainable" else importlib.import_module(
        COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"headsweep {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
