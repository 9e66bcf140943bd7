"""Ray Tune and Optuna for a sweep: the search, the two stages, the methods' grids, resume checks, the driver.

:func:`run_sweep` runs a validated :class:`~sweeps.sweep.Sweep` with the trainables it is given (``trainable.py``
defines them), so calls go from the entry point down: ``trainable.main`` -> ``run_sweep`` -> Tune -> a trainable ->
:func:`sweeps.trial.run_trial` -> ``model.train``. Ray and Optuna are imported where they are used.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import metrics as M
from model.checkpoint import git_commit, package_versions
from model.config import flatten
from model.corpora import CorpusError, FilesCorpus

from .baselines import layout_heads, layout_name, parse_layout_name
from .pareto import pareto_front
from .placement import check_placement, check_shared_storage, read_autoscaler
from .raycluster import cluster_to_join, start_ray
from .results import (
    BUDGET,
    LAYOUT,
    LAYOUT_SEED,
    PRETRAINED_DIR,
    STAGE,
    STATUS,
    SWEEP_FILE,
    WANDB_DIR,
    WANDB_RUN,
    join_storage,
    uri_of,
    write_text,
    write_trials_table,
)
from .schema import BUDGET_METHODS, RUN_LOCATION_KEYS, MethodRun
from .storage import exists, ray_storage, read_bytes
from .study import StateError, StudyStorage, check_resumable, ensure_study_file, fresh_study_file
from .sweep import Sweep, base_hash, schema_dict
from .validate import absolute_paths, check_gpus
from .wandb_log import resolve_mode, unreachable_backend

# Optuna trial user attributes that tie a study's trial to its Ray trial and its W&B run
RAY_TRIAL_ATTR, WANDB_RUN_ATTR = "ray_trial_id", WANDB_RUN


class SweepError(RuntimeError):
    """The sweep cannot start or continue (nothing to resume, a folder in use, a failed base model)."""


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


def tune_space(sweep: Sweep) -> dict[str, Any]:
    """The YAML search space as Tune domains (the one place this translation happens)."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in sweep.space:
        if d.kind == "loguniform":
            out[d.key] = tune.loguniform(*d.args)
        elif d.kind == "uniform":
            out[d.key] = tune.uniform(*d.args)
        elif d.kind == "randint":
            out[d.key] = tune.randint(d.args[0], d.args[1] + 1)  # Tune's upper bound is exclusive
        else:
            out[d.key] = tune.choice(list(d.args))
    return out


def make_searcher(sweep: Sweep):
    """OptunaSearch with the objective lists (never metric/mode in TuneConfig: that makes it single-objective)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class HeadsweepSearch(OptunaSearch):
        """OptunaSearch that names the study's objectives, ties each Optuna trial to its Ray trial and W&B run
        (user attributes), and tells a trial whose final objectives are not finite (it diverged) to Optuna as
        FAIL, not left RUNNING (Optuna refuses NaN values for a COMPLETE trial)."""

        def _setup_study(self, mode):
            super()._setup_study(mode)
            with warnings.catch_warnings():  # experimental in Optuna since 3.2, and what the dashboard shows
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self.metric))

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
            return params

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            super().save_to_dir(checkpoint_dir, session_str)
            if isinstance(self._storage, StudyStorage):  # a remote sweep's study travels with the searcher's state
                self._storage.save_snapshot(checkpoint_dir)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id not in self._ot_trials and trial_id not in self._completed_trials:
                self._tell_unknown(trial_id, result, error)
                return
            if result and result.get(WANDB_RUN) and trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr(WANDB_RUN_ATTR, result[WANDB_RUN])
            values = [(result or {}).get(m) for m in self.metric] if isinstance(self.metric, list) else []
            if result and any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                result, error = None, True
            super().on_trial_complete(trial_id, result, error)

        def _tell_unknown(self, trial_id: str, result: dict | None, error: bool) -> None:
            """A trial that Tune restored but this searcher's restored state does not know: Tune copies its
            experiment state, the search wrappers' state and this searcher's pickle to the storage one file after
            another, and a driver killed in between leaves them apart. OptunaSearch would raise KeyError (and stop
            every resume of the sweep); the trial is told to the study instead: its own RUNNING record when the
            study has one (Optuna's storage is written live), else a new record from its config and result."""
            result = result or {}
            values = [result.get(m) for m in self.metric] if isinstance(self.metric, list) else []
            done = not error and values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            state = optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.FAIL
            attrs = {RAY_TRIAL_ATTR: trial_id, **({WANDB_RUN_ATTR: result[WANDB_RUN]} if result.get(WANDB_RUN) else {})}
            running = [t for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if t.user_attrs.get(RAY_TRIAL_ATTR) == trial_id]
            if running:
                trial = optuna.trial.Trial(self._ot_study, running[0]._trial_id)
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
                self._ot_study.tell(trial, values if done else None, state=state)
            else:
                config = result.get("config") or {k.removeprefix("config/"): v for k, v in result.items()
                                                  if k.startswith("config/")}
                space = self._space if isinstance(self._space, dict) else {}
                params = {k: config[k] for k in space if k in config}
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=params, distributions={k: space[k] for k in params}, values=values if done else None,
                    state=state, user_attrs=attrs))
            self._completed_trials.add(trial_id)
            print(f"trial {trial_id}: unknown to the restored Optuna searcher; recorded in the study as "
                  f"{state.name} from its result", flush=True)

    s = sweep.search
    tpe = {} if s.startup_trials is None else {"n_startup_trials": s.startup_trials}
    nsga2 = {} if s.population_size is None else {"population_size": s.population_size}
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, **tpe),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed, **nsga2),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
        "grid": lambda: optuna.samplers.GridSampler({d.key: d.grid() for d in sweep.space}, seed=s.seed),
    }
    fresh_study_file(sweep.experiment_dir)  # a new sweep (a restored one gets its searcher from Tune's state)
    storage = StudyStorage(sweep.experiment_dir)
    return HeadsweepSearch(
        metric=[o.metric for o in sweep.objectives], mode=[o.mode for o in sweep.objectives],
        sampler=samplers[s.sampler](), study_name=sweep.name, storage=storage,
        points_to_evaluate=sweep.points_to_evaluate() or None,
    )


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


def _can_restore(experiment: str) -> bool:
    """Whether ``experiment`` (a folder or URI) holds a Tune experiment's state."""
    from ray import tune

    path, fs = ray_storage(experiment)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def _fit(tuner_factory, trainable, experiment: str, resume: bool, keep: int):
    from ray import tune

    from .retention import prune_checkpoints, state_period

    state_period()  # before Tune starts, also for a restored sweep (its callbacks come from the stored tuner)
    if _can_restore(experiment):
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
        fresh = not _can_restore(experiment)
        print(f"base model {name} ({variant or 'the base config'}): "
              + ("training" if fresh else "found, reusing or finishing it"), flush=True)
        def new_tuner(trainable=trainable, variant=variant, name=name):
            return tune.Tuner(trainable, param_space=dict(variant), tune_config=tune.TuneConfig(num_samples=1),
                              run_config=_run_config(sweep, name, root, keep=1))

        grid = _fit(new_tuner, trainable, experiment, resume=not fresh, keep=1)
        result = grid[0]
        if result.error is not None or result.checkpoint is None or result.metrics.get(M.STATUS) != "completed":
            raise SweepError(f"base model {name} did not complete ({result.error or result.metrics.get(M.STATUS)}); "
                             f"see {result.path}. Fix the cause, then rerun the same command to finish it.")
        bases[key] = uri_of(result.checkpoint.filesystem, result.checkpoint.path)
        results.append(result)
    return bases, results


def prune_stage(sweep: Sweep, setup: TrialSetup, trainables: Trainables, resume: bool):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(trainables.prune, setup=setup), _resources(sweep.resources))

    def new_tuner():
        return tune.Tuner(
            trainable, param_space=tune_space(sweep),
            tune_config=tune.TuneConfig(search_alg=make_searcher(sweep), num_samples=sweep.search.num_samples,
                                        max_concurrent_trials=sweep.search.max_concurrent),
            run_config=_run_config(sweep, sweep.name, sweep.storage, keep=sweep.schema.keep_checkpoints),
        )

    return _fit(new_tuner, trainable, sweep.experiment_dir, resume, sweep.schema.keep_checkpoints)


def scratch_layouts(sweep: Sweep, gate_trials) -> list[str]:
    """The layouts ``scratch`` trains: those of the gate trials (Pareto-optimal or all completed ones), and the
    full model's unless ``baselines.scratch_full`` is false, smallest first."""
    done = gate_trials[(gate_trials[STAGE] == "prune") & (gate_trials[STATUS] == "completed")]
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
    if run.method == "scratch":
        space = {LAYOUT: tune.grid_search(scratch_layouts(sweep, gate_trials)),
                 LAYOUT_SEED: tune.grid_search(list(range(b.scratch_seeds)))}
        trainable = tune.with_resources(tune.with_parameters(trainables.scratch, setup=setup),
                                        _resources(sweep.scratch_resources))
    else:
        space = {BUDGET: tune.grid_search(sweep.budgets()), LAYOUT_SEED: tune.grid_search(list(range(b.seeds)))}
        function = trainables.gates_budget if run.method == "gates_budget" else trainables.layout
        trainable = tune.with_resources(tune.with_parameters(function, setup=setup, run=run),
                                        _resources(sweep.resources))
    experiment = join_storage(sweep.storage, run.name)
    found = _can_restore(experiment)
    if found and not resume:
        raise SweepError(f"{experiment} already holds the {run.label} trials of a sweep: pass --resume to continue "
                         f"it, or choose another name (--set name=...) or --results folder")
    print(f"method {run.label}: {experiment}", flush=True)

    def new_tuner():
        return tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.search.max_concurrent),
                          run_config=_run_config(sweep, run.name, sweep.storage, keep=sweep.schema.keep_checkpoints,
                                                 params=list(space)))

    return _fit(new_tuner, trainable, experiment, resume=found, keep=sweep.schema.keep_checkpoints), list(space)


# --------------------------------------------------------------------------------------------------
# Driver


def _where_not_what(key: str) -> bool:
    """A recorded sweep key that says where or how fast trials run (W&B, folders, threads, the CPUs and GPUs a trial
    or a base model is given, the results root the folder was moved to) or how they are scored afterwards (test.*),
    not what they learn."""
    return key.startswith(("wandb.", "test.", "resources.", "pretrain.resources.",
                            "baselines.scratch_resources.")) or key in (
        "storage", "storage_shared") or any(
        key == f"{p}{k}" for p in ("base.", "pretrain.set.", "prune.set.") for k in RUN_LOCATION_KEYS)


def sweep_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two resolved sweeps, W&B settings and the run-location keys
    (corpus and cache folders, threads, device) aside: they may change between a sweep and its resume."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not _where_not_what(k) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def check_cluster(sweep: Sweep) -> None:
    """On the Ray cluster the driver uses: refuse trials no node can ever hold and local storage that other
    machines cannot reach; say when trials wait for the autoscaler."""
    import ray

    nodes = [{**n.get("Resources", {}), "host": n.get("NodeManagerAddress")} for n in ray.nodes() if n.get("Alive")]
    autoscaler = read_autoscaler()
    stages = [("resources", sweep.resources)]  # base models: pretrain.resources; scratch trials: their own
    if sweep.schema.pretrain.resources is not None:
        stages.append(("pretrain.resources", sweep.pretrain_resources))
    if "scratch" in sweep.methods and sweep.schema.baselines.scratch_resources is not None:
        stages.append(("baselines.scratch_resources", sweep.scratch_resources))
    for where, res in stages:
        note = check_placement(where, res.cpus, res.gpus, nodes, autoscaler, res.autoscale)
        if note:
            print(note, flush=True)
    check_shared_storage(sweep.storage, nodes, autoscaler, sweep.schema.storage_shared)


def _sweep_record(sweep: Sweep, run: MethodRun) -> dict[str, Any]:
    """sweep.json of one method folder: the resolved sweep, and which of its methods the folder holds."""
    record = schema_dict(sweep)
    if len(sweep.method_runs()) > 1:
        record.update(label=run.label, run={"method": run.method, "finetune_steps": run.finetune_steps,
                                            "name": run.name})
    return record


# the baselines' settings each method's trials depend on (methods and fine-tuning variants may be added later)
BASELINE_KEYS = {"gates": (), "gates_budget": ("budgets", "seeds", "finetune_steps"),
                 "importance": ("budgets", "seeds", "importance_batches"),
                 "iterative": ("budgets", "seeds", "importance_batches", "iterative_fraction"),
                 "random": ("budgets", "seeds"),
                 "scratch": ("scratch_layouts", "scratch_limit", "scratch_set", "scratch_seeds", "scratch_full")}
# what a sweep recorded before a key existed had: the key's default (so that such a sweep resumes)
RECORDED_BEFORE = {"scratch_full": True}


def _settings_of(run: MethodRun, record: dict[str, Any]) -> dict[str, Any]:
    """The part of a recorded sweep that decides the trials of one method folder."""
    keys = BASELINE_KEYS[run.method] + (("set",) if run.finetune_steps else ())
    out = {k: v for k, v in record.items() if k not in ("label", "run", "method", "baselines")}
    out["baselines"] = {k: v for k, v in {**RECORDED_BEFORE, **(record.get("baselines") or {})}.items() if k in keys}
    return out


def with_absolute_paths(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded sweep (``sweep.json``) with its base config's paths made absolute as the driver now makes them
    (a sweep recorded before that, with ``$HEADSWEEP_DATA/...`` or relative corpus paths, compares equal)."""
    record = dict(record)
    if isinstance(record.get("base"), dict):
        record["base"] = absolute_paths(record["base"])
    pretrain = record.get("pretrain")
    if isinstance(pretrain, dict) and isinstance(pretrain.get("set"), dict):
        record["pretrain"] = {**pretrain, "set": absolute_paths(pretrain["set"], nested=False)}
    return record


def _check_resume(sweep: Sweep, resume: bool) -> None:
    """Refuse before anything starts: a finished folder without --resume, --resume with nothing, a changed sweep.

    A sweep exists once one of its base models or method folders does (it may have stopped during pretraining)."""
    folders = [join_storage(sweep.storage, run.name) for run in sweep.method_runs()]
    started = any(_can_restore(folder) for folder in folders)
    if started and not resume:
        raise SweepError(f"{sweep.experiment_dir} already holds a sweep: pass --resume to continue it, or choose "
                         f"another name (--set name=...) or --results folder")
    bases = [join_storage(sweep.storage, PRETRAINED_DIR, name) for _, _, name in sweep.base_experiments()
             ] if sweep.pretraining and sweep.schema.pretrain.checkpoint is None else []
    if resume and not started and not any(_can_restore(base) for base in bases):
        raise SweepError(f"--resume: there is no sweep in {sweep.experiment_dir} to resume")
    for folder in folders:
        if resume and _can_restore(folder):
            try:
                check_resumable(folder)
            except StateError as exc:
                raise SweepError(f"--resume: {exc}") from None
    for run, folder in zip(sweep.method_runs(), folders):
        recorded = join_storage(folder, SWEEP_FILE)
        if resume and exists(recorded):
            old = _settings_of(run, with_absolute_paths(json.loads(read_bytes(recorded))))
            new = _settings_of(run, schema_dict(sweep))
            changed = sweep_differences(old, new)
            if changed:
                raise SweepError(f"--resume: the sweep differs from the one in {recorded}: {'; '.join(changed)}. "
                                 f"Resume it unchanged, or start a new sweep (--set name=...).")


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

    _check_resume(sweep, resume)
    if cluster is None:  # a private local Ray: this machine's GPUs are all there is
        import torch

        devices = float(torch.cuda.device_count())
        check_gpus(sweep.resources.gpus, devices, False)
        check_gpus(sweep.pretrain_resources.gpus, devices, False, "pretrain.resources.gpus")
        if "scratch" in sweep.methods:
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
            write_text(join_storage(folder, SWEEP_FILE), json.dumps(_sweep_record(sweep, run), indent=2) + "\n")
            if run.method == "gates":
                grid = prune_stage(sweep, setup, trainables, resume)
                params = [d.key for d in sweep.space]
            else:
                grid, params = baseline_stage(sweep, setup, trainables, run, resume, tables.get(runs[0]))
            tables[run] = write_trials_table(folder, params, grid, base_results, run.method)
            if unfinished_trials(sweep, run, tables[run]):  # interrupted (Ctrl-C) or failed: later methods wait
                break
    finally:
        if started:
            ray.shutdown()
    return tables


def expected_trials(sweep: Sweep, run: MethodRun, df) -> int:
    """How many trials a finished method folder holds."""
    if run.method == "gates":
        return sweep.search.num_samples
    if run.method in BUDGET_METHODS:
        return len(sweep.budgets()) * sweep.schema.baselines.seeds
    return int((df[STAGE] == "prune").sum())  # scratch: per layout and seed, known once the gate trials finished


def unfinished_trials(sweep: Sweep, run: MethodRun, df) -> int:
    """Trials of a method folder that did not finish (neither completed nor diverged), or never started."""
    prune = df[df[STAGE] == "prune"]
    unfinished = int((~prune[STATUS].isin(["completed", "diverged"])).sum())
    return unfinished + max(expected_trials(sweep, run, df) - len(prune), 0)


