"""Ray Tune for a sweep: the two stages, the methods' grids and the driver (the search: sweeps/search.py; resume
checks: sweeps/resume.py; joining or starting Ray: sweeps/raycluster.py).

:func:`run_sweep` runs a validated :class:`~sweeps.sweep.Sweep` with the trainables it is given (``trainable.py``
defines them), so calls go from the entry point down: ``trainable.main`` -> ``run_sweep`` -> Tune -> a trainable ->
:func:`sweeps.trial.run_trial` -> ``model.train``. Ray and Optuna are imported where they are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import metrics as M
from model.checkpoint import git_commit, package_versions
from model.corpora import CorpusError, FilesCorpus

from .baselines import layout_heads, layout_name, parse_layout_name
from .constraints import Bound, base_bounds, read_bounds
from .pareto import pareto_front
from .placement import check_placement, check_shared_storage, read_autoscaler
from .raycluster import cluster_to_join, start_ray
from .results import (
    BUDGET,
    FINISHED_FILE,
    FINISHED_STATUSES,
    LAYOUT,
    LAYOUT_SEED,
    PRETRAINED_DIR,
    PRUNE,
    SCORED_STATUSES,
    STAGE,
    STATUS,
    SWEEP_FILE,
    WANDB_DIR,
    checkpoint_file,
    is_record,
    join_storage,
    read_trials_table,
    uri_of,
    write_text,
    write_trials_table,
)
from .resume import SweepError, can_restore, check_resume, sweep_record
from .scheduler import make_scheduler, stopped_trials
from .schema import BUDGET_METHODS, GATES, GATES_BUDGET, SCRATCH, MethodRun
from .search import make_searcher, tune_space
from .storage import ray_storage
from .study import ensure_study_file
from .sweep import Sweep, base_hash
from .validate import check_gpus
from .wandb_log import resolve_mode, unreachable_backend


@dataclass
class TrialSetup:
    """What every trial of a sweep needs besides its params (shipped to workers once, by Ray)."""

    sweep: Sweep
    bases: dict[str, str]  # base hash -> base checkpoint (a Tune checkpoint folder/URI, or a .pt file)
    wandb_mode: str  # resolved: online | offline | disabled
    wandb_dir: str | None  # None: the trial's own folder
    provenance: dict[str, Any]  # git commit and package versions of the driver


@dataclass(frozen=True)
class Trainables:
    """The function trainables of a sweep's stages (``trainable.py``), each ``f(params, setup[, run])``."""

    pretrain: Callable[..., None]
    prune: Callable[..., None]
    layout: Callable[..., None]
    scratch: Callable[..., None]
    gates_budget: Callable[..., None]


# --------------------------------------------------------------------------------------------------
# Ray objects from the sweep


def _resources(res) -> dict[str, float]:
    return {"cpu": res.cpus, "gpu": res.gpus}


def _run_config(sweep: Sweep, name: str, storage: str, keep: int, params: list[str] | None = None):
    from ray import tune

    from .retention import CheckpointRetention, state_period

    columns = [o.metric for o in sweep.objectives] + [M.STEP]
    params = [d.key for d in sweep.space] if params is None else params
    storage_path, storage_filesystem = ray_storage(storage)
    return tune.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=1,
        failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
        # Tune keeps every checkpoint; CheckpointRetention deletes old ones only when no resume can need them
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[CheckpointRetention(keep, state_period())],
        progress_reporter=tune.CLIReporter(metric_columns=columns, parameter_columns=params,
                                           max_report_frequency=30),
    )


def _fit(tuner_factory, trainable, experiment: str, resume: bool, keep: int):
    from ray import tune

    from .retention import prune_checkpoints, state_period

    state_period()  # before Tune starts, also for a restored sweep (its callbacks come from the stored tuner)
    if can_restore(experiment):
        if not resume:
            raise SweepError(f"{experiment} already holds a sweep: pass --resume to continue it, or choose another "
                             f"name (--set name=...) or --results folder")
        print(f"resuming {experiment}", flush=True)
        ensure_study_file(experiment)  # a remote sweep's study, as the state being restored left it
        path, fs = ray_storage(experiment)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    else:  # with --resume too: the sweep stopped before this stage began (the driver checked it exists)
        tuner = tuner_factory()
    grid = tuner.fit()
    prune_checkpoints(grid, keep)  # the final state is saved: each trial's older checkpoints can go
    return grid


def pretrain_stage(sweep: Sweep, setup: TrialSetup, trainables: Trainables) -> tuple[dict[str, str], list[Any]]:
    """Train (or find) every base model; returns {hash: checkpoint} and their Tune results."""
    from ray import tune

    if not sweep.pretraining:
        return {}, []
    if sweep.schema.pretrain.checkpoint is not None:
        return {base_hash(sweep.base_config()): sweep.schema.pretrain.checkpoint}, []
    bases, results = {}, []
    root = join_storage(sweep.storage, PRETRAINED_DIR)
    for variant, key, name in sweep.base_experiments():
        experiment = join_storage(root, name)
        trainable = tune.with_resources(tune.with_parameters(trainables.pretrain, setup=setup),
                                        _resources(sweep.pretrain_resources))
        fresh = not can_restore(experiment)
        print(f"base model {name} ({variant or 'the base config'}): "
              + ("training" if fresh else "found, reusing or finishing it"), flush=True)
        def new_tuner(trainable=trainable, variant=variant, name=name):
            return tune.Tuner(trainable, param_space=dict(variant), tune_config=tune.TuneConfig(num_samples=1),
                              run_config=_run_config(sweep, name, root, keep=1))

        grid = _fit(new_tuner, trainable, experiment, resume=not fresh, keep=1)
        result = grid[0]
        if result.error is not None or result.checkpoint is None or result.metrics.get(M.STATUS) != M.COMPLETED:
            raise SweepError(f"base model {name} did not complete ({result.error or result.metrics.get(M.STATUS)}); "
                             f"see {result.path}. Fix the cause, then rerun the same command to finish it.")
        bases[key] = uri_of(result.checkpoint.filesystem, result.checkpoint.path)
        results.append(result)
    return bases, results


def constraint_bounds(sweep: Sweep, setup: TrialSetup) -> dict[str, list[Bound]]:
    """The bounds of the sweep's constraints per base model ({} without constraints); a bound relative to the base
    model needs its score on the trials' validation sentences, measured here once (on the driver) and kept."""
    if not sweep.schema.constraints:
        return {}
    cfg = sweep.trial_config({})

    def score(checkpoint: str) -> dict[str, float]:
        from model.evaluate import evaluate_checkpoint

        path = checkpoint if checkpoint.endswith(".pt") else str(checkpoint_file(checkpoint))
        print(f"constraints: scoring the base model {checkpoint} on {cfg.eval.split} (the trials' settings)",
              flush=True)
        found = evaluate_checkpoint(path, cfg.eval.split, cfg.eval, log=lambda _: None,
                                    data_dir=cfg.data.data_dir)[0]
        return {M.BLEU: found.bleu, M.CHRF: found.chrf}

    bases = setup.bases or {"": ""}
    bounds = base_bounds(sweep.experiment_dir, sweep.schema.constraints, bases, score)
    for key, found in bounds.items():
        print(f"constraints{f' (base {key})' if key else ''}: " + ", ".join(b.describe() for b in found), flush=True)
    return bounds


def prune_stage(sweep: Sweep, setup: TrialSetup, trainables: Trainables, resume: bool,
                bounds: dict[str, list[Bound]] | None = None):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(trainables.prune, setup=setup), _resources(sweep.resources))

    def new_tuner():
        return tune.Tuner(
            trainable, param_space=tune_space(sweep),
            tune_config=tune.TuneConfig(search_alg=make_searcher(sweep, bounds), num_samples=sweep.search.num_samples,
                                        max_concurrent_trials=sweep.search.max_concurrent,
                                        scheduler=early_stopping(sweep), reuse_actors=sweep.search.reuse_actors),
            run_config=_run_config(sweep, sweep.name, sweep.storage, keep=sweep.schema.keep_checkpoints),
        )

    return _fit(new_tuner, trainable, sweep.experiment_dir, resume, sweep.schema.keep_checkpoints)


def early_stopping(sweep: Sweep):
    """The gate trials' scheduler: MO-ASHA over the sweep's objectives (search.scheduler), or None (Tune's FIFO:
    every trial to its last step)."""
    c = sweep.search.scheduler
    if c.kind == "none":
        return None
    t = sweep.trial_config({}).train
    return make_scheduler([(o.metric, o.mode) for o in sweep.objectives], c.grace_steps or t.eval_every,
                          c.reduction_factor, t.max_steps, sweep.experiment_dir,
                          ranked_by={M.OPEN_HEADS: M.L0} if c.heads_at_rungs == "l0" else {})


def scratch_layouts(sweep: Sweep, gate_trials) -> list[str]:
    """The layouts ``scratch`` trains: those of the gate trials (Pareto-optimal or all completed ones), and the
    full model's unless ``baselines.scratch_full`` is false, smallest first."""
    done = gate_trials[(gate_trials[STAGE] == PRUNE) & gate_trials[STATUS].isin(SCORED_STATUSES)]
    if sweep.schema.baselines.scratch_layouts == "pareto" and not done.empty:
        done = pareto_front(done, [o.metric for o in sweep.objectives], [o.mode for o in sweep.objectives])
    cfg = sweep.trial_config({})
    kinds = list(cfg.gates.attention)
    full = {k: [cfg.model.n_heads] * cfg.model.layers(k) for k in kinds}
    names = {layout_name(layout_heads(row, cfg, kinds)) for row in done.to_dict("records")} - {layout_name(full)}
    found = sorted(names, key=lambda name: (sum(sum(v) for v in parse_layout_name(name).values()), name))
    limit = sweep.schema.baselines.scratch_limit
    if limit is not None and len(found) > limit:  # evenly spread from the smallest to the largest
        found = [found[round(i * (len(found) - 1) / max(1, limit - 1))] for i in range(limit)]
    if not sweep.schema.baselines.scratch_full:
        if not found:
            raise SweepError("method scratch: the gate trials left no layout but the full model's, and "
                             "baselines.scratch_full is false: nothing to train from scratch (set it to true, or "
                             "scratch_layouts: all, and continue with --resume)")
        return found
    return found + [layout_name(full)]


def baseline_stage(sweep: Sweep, setup: TrialSetup, trainables: Trainables, run: MethodRun, resume: bool,
                   gate_trials=None):
    """One baseline method's experiment: a grid over budgets and seeds, or over the gate trials' layouts (and
    seeds)."""
    from ray import tune

    b = sweep.schema.baselines
    if run.method == SCRATCH:
        space = {LAYOUT: tune.grid_search(scratch_layouts(sweep, gate_trials)),
                 LAYOUT_SEED: tune.grid_search(list(range(b.scratch_seeds)))}
        trainable = tune.with_resources(tune.with_parameters(trainables.scratch, setup=setup),
                                        _resources(sweep.scratch_resources))
    else:
        space = {BUDGET: tune.grid_search(sweep.budgets()), LAYOUT_SEED: tune.grid_search(list(range(b.seeds)))}
        function = trainables.gates_budget if run.method == GATES_BUDGET else trainables.layout
        trainable = tune.with_resources(tune.with_parameters(function, setup=setup, run=run),
                                        _resources(sweep.resources))
    experiment = join_storage(sweep.storage, run.name)
    found = can_restore(experiment)
    if found and not resume:
        raise SweepError(f"{experiment} already holds the {run.label} trials of a sweep: pass --resume to continue "
                         f"it, or choose another name (--set name=...) or --results folder")
    print(f"method {run.label}: {experiment}", flush=True)

    def new_tuner():
        return tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.search.max_concurrent,
                                                      reuse_actors=sweep.search.reuse_actors),
                          run_config=_run_config(sweep, run.name, sweep.storage, keep=sweep.schema.keep_checkpoints,
                                                 params=list(space)))

    return _fit(new_tuner, trainable, experiment, resume=found, keep=sweep.schema.keep_checkpoints), list(space)


# --------------------------------------------------------------------------------------------------
# Driver


def check_cluster(sweep: Sweep) -> None:
    """On the Ray cluster the driver uses: refuse trials no node can ever hold and local storage that other
    machines cannot reach; say when trials wait for the autoscaler."""
    import ray

    nodes = [{**n.get("Resources", {}), "host": n.get("NodeManagerAddress")} for n in ray.nodes() if n.get("Alive")]
    autoscaler = read_autoscaler()
    stages = [("resources", sweep.resources)]  # base models: pretrain.resources; scratch trials: their own
    if sweep.schema.pretrain.resources is not None:
        stages.append(("pretrain.resources", sweep.pretrain_resources))
    if SCRATCH in sweep.methods and sweep.schema.baselines.scratch_resources is not None:
        stages.append(("baselines.scratch_resources", sweep.scratch_resources))
    for where, res in stages:
        note = check_placement(where, res.cpus, res.gpus, nodes, autoscaler, res.autoscale)
        if note:
            print(note, flush=True)
    check_shared_storage(sweep.storage, nodes, autoscaler, sweep.schema.storage_shared)


def check_corpus_files(sweep: Sweep) -> None:
    """Local files named by the base config (data.corpus: files) exist, before Ray starts (on a cluster they are
    looked up where the trials run)."""
    for variant in sweep.base_variants():
        cfg = sweep.base_config(variant)
        if cfg.data.corpus != "files":
            continue
        for split in ("train", cfg.eval.split):
            try:
                FilesCorpus(cfg.data).paths(split)
            except CorpusError as exc:
                raise CorpusError(f"{sweep.path or 'the sweep'}: base config: {exc}") from None


def run_sweep(sweep: Sweep, trainables: Trainables, resume: bool = False, address: str | None = None,
              dashboard: bool = False, dashboard_host: str = "127.0.0.1", local: bool = False):
    """The base models, then each method's trials and table; returns {method run: trials DataFrame}."""
    cluster = cluster_to_join(address, local)
    if cluster is None:  # a private local Ray stays on 127.0.0.1: Ray reads this once, when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    check_resume(sweep, resume)
    if cluster is None:  # a private local Ray: this machine's GPUs are all there is
        import torch

        devices = float(torch.cuda.device_count())
        check_gpus(sweep.resources.gpus, devices, False)
        check_gpus(sweep.pretrain_resources.gpus, devices, False, "pretrain.resources.gpus")
        if SCRATCH in sweep.methods:
            check_gpus(sweep.scratch_resources.gpus, devices, False, "baselines.scratch_resources.gpus")
        check_corpus_files(sweep)
    mode = resolve_mode(sweep.schema.wandb.mode)
    if mode == "online" and (reason := unreachable_backend()):
        print(f"W&B backend {reason}: every run of this sweep is kept offline (upload later with `wandb sync`)",
              flush=True)
        mode = "offline"
    local_storage = "://" not in sweep.storage
    wandb_dir = str(Path(sweep.experiment_dir) / WANDB_DIR) if local_storage else None
    if mode != "disabled":
        os.environ["WANDB_MODE"] = mode  # before Ray starts, so that workers inherit it
        if wandb_dir:
            os.environ["WANDB_DIR"] = wandb_dir
    started = not ray.is_initialized()
    if started:
        start_ray(cluster, dashboard, dashboard_host)
    tables: dict[MethodRun, Any] = {}
    try:
        check_cluster(sweep)
        runs = sweep.method_runs()
        provenance = {"git_commit": git_commit(), "versions": json.dumps(package_versions(), sort_keys=True)}
        setup = TrialSetup(sweep, {}, mode, wandb_dir, provenance)
        setup.bases, base_results = pretrain_stage(sweep, setup, trainables)
        for run in runs:
            folder = join_storage(sweep.storage, run.name)
            if is_record(folder):  # finished and kept as a record (sweeps.record): its table stands for its trials
                print(f"method {run.label}: {folder} is a finished record, kept as it is", flush=True)
                tables[run] = read_trials_table(folder)
                continue
            write_text(join_storage(folder, SWEEP_FILE), json.dumps(sweep_record(sweep, run), indent=2) + "\n")
            if run.method == GATES:
                bounds = constraint_bounds(sweep, setup)
                grid = prune_stage(sweep, setup, trainables, resume, bounds)
                params = [d.key for d in sweep.space]
            else:
                grid, params = baseline_stage(sweep, setup, trainables, run, resume, tables.get(runs[0]))
            stopped = stopped_trials(folder) if run.method == GATES else {}
            tables[run] = write_trials_table(folder, params, grid, base_results, run.method, stopped,
                                             read_bounds(folder) if run.method == GATES else {})
            if unfinished_trials(sweep, run, tables[run]):  # interrupted (Ctrl-C) or failed: later methods wait
                break
            done = {"trials": int((tables[run][STAGE] == PRUNE).sum()), "expected": expected_trials(sweep, run,
                                                                                                   tables[run])}
            write_text(join_storage(folder, FINISHED_FILE), json.dumps(done) + "\n")  # what sweeps.record asks for
    finally:
        if started:
            ray.shutdown()
    return tables


def expected_trials(sweep: Sweep, run: MethodRun, df) -> int:
    """How many trials a finished method folder holds."""
    if run.method == GATES:
        return sweep.search.num_samples
    if run.method in BUDGET_METHODS:
        return len(sweep.budgets()) * sweep.schema.baselines.seeds
    return int((df[STAGE] == PRUNE).sum())  # scratch: per layout and seed, known once the gate trials finished


def unfinished_trials(sweep: Sweep, run: MethodRun, df) -> int:
    """Trials of a method folder that did not finish (neither completed nor diverged), or never started."""
    prune = df[df[STAGE] == PRUNE]
    unfinished = int((~prune[STATUS].isin(FINISHED_STATUSES)).sum())
    return unfinished + max(expected_trials(sweep, run, df) - len(prune), 0)


