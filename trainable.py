"""The sweep driver: a Ray Tune function trainable over the training loop, searched by Optuna.

    python trainable.py SWEEP.yaml [--resume] [--smoke-test] [--address ADDR] [--results DIR] [--set key=value ...]

1. The sweep YAML is loaded and validated (``model/sweep.py``); nothing starts if it is wrong.
2. Stage ``pretrain``: each distinct base model (one per value of searched model/corpus keys) is trained once as a
   one-trial Tune experiment under ``<results>/pretrained/base-<hash>`` and reused by every later sweep with the
   same base config.
3. Stage ``prune``: Optuna (multi-objective; its study in ``<results>/<sweep>/optuna.db``) proposes the trials;
   each loads its base model, learns gates with the L0 penalty and reports every evaluation with a checkpoint.
4. ``<results>/<sweep>/trials.csv``: one row per trial (params, final and best metrics, open heads per type and
   layer, status, checkpoint, wall time, git commit, versions); the Pareto-optimal trials are printed.
5. With ``method: [gates, importance, random, scratch]`` the baselines follow, each a grid in its own folder
   ``<results>/<sweep>-<method>[-ft<N>]`` with its own table (``model/baselines.py``); a method starts only when
   the one before it has finished, and ``<sweep>/report/methods.html`` compares their fronts.

This is the only module that imports Ray (``model/`` runs without it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.load import SWEEP_FILE, TRIALS_FILE
from model import metrics as M
from model.baselines import BUDGET, LAYOUT, LAYOUT_SEED, layout_heads, layout_name, parse_layout_name, pruned_start
from model.checkpoint import CheckpointError, git_commit, package_versions
from model.config import ConfigError, flatten
from model.corpora import CorpusError, FilesCorpus
from model.sweep import MethodRun, Sweep, base_hash, check_gpus, join_storage, load_sweep, schema_dict
from model.train import TrainingError
from model.trial import checkpoint_file, last_record, run_trial
from model.wandb_log import TrialLogger, resolve_mode, unreachable_backend

OPTUNA_FILE = "optuna.db"
PRETRAINED_DIR = "pretrained"
TABLE_METRICS = (M.BLEU, M.CHRF, M.OPEN_HEADS, M.L0, M.PENALTY, M.VALID_NLL, M.LOSS, M.LR, M.STEP, M.EPOCH)


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


# --------------------------------------------------------------------------------------------------
# The trainables (run inside Ray workers)


def _trial_log(msg: str) -> None:
    if not msg.startswith("  src:"):  # samples go to samples.jsonl and W&B
        print(msg.split("\n", 1)[0], flush=True)


def _run(setup: TrialSetup, stage: str, base_key: str, params: dict[str, Any],
         prepare: Callable[[Path], tuple[Any, str | None]], method: str = "gates") -> None:
    """Shared body of the trainables: restore, train, report to Tune and W&B.

    ``prepare(scratch)`` returns the run config and the checkpoint a fresh run starts from (None: random
    initialisation). The run's own folder is scratch space outside the trial folder (Ray copies the trial folder to
    the storage): everything worth keeping leaves with the reports, so the scratch folder goes when the trial ends.
    """
    from ray import tune

    ctx = tune.get_context()
    sweep = setup.sweep
    restore = tune.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix=f"headsweep-{ctx.get_trial_id()}-",
                                     dir=os.environ.get("HEADSWEEP_SCRATCH")) as scratch:
        cfg, init_from = prepare(Path(scratch))
        logger = TrialLogger(
            setup.wandb_mode, sweep.schema.wandb.project, sweep.wandb_group,
            run_id=f"{sweep.name}-{ctx.get_trial_id()}", name=ctx.get_trial_name(),
            directory=setup.wandb_dir or ctx.get_trial_dir(), entity=sweep.schema.wandb.entity,
            tags=sweep.schema.wandb.tags, job_type=stage if stage == "pretrain" else method,
            init_timeout=sweep.schema.wandb.init_timeout, upload_timeout=sweep.schema.wandb.upload_timeout,
            config={**params, "stage": stage, "method": method, "base": base_key, "config": cfg.to_dict(),
                    **setup.provenance},
            log=_trial_log,
        )
        constant = {"stage": stage, "method": method, "base": base_key, "seed": cfg.train.seed, **setup.provenance}

        def report(metrics: dict[str, Any], folder: Path | None) -> None:
            record = {**{o.metric: math.nan for o in sweep.objectives}, **metrics, **constant}  # NaN: Optuna FAIL
            if folder is None:
                tune.report(record)
            else:
                tune.report(record, checkpoint=tune.Checkpoint.from_directory(str(folder)))
                gates, samples = last_record(folder / "gates.jsonl"), last_record(folder / "samples.jsonl")
                logger.log(metrics, step=int(metrics[M.STEP]), gates=(gates or {}).get("gates"),
                           samples=(samples or {}).get("samples"))

        try:
            run_dir = Path(scratch) / "run"
            if restore is not None:
                with restore.as_directory() as folder:
                    run_trial(cfg, run_dir, report, restore_from=folder, log=_trial_log)
            else:
                run_trial(cfg, run_dir, report, init_from=init_from, log=_trial_log)
        except BaseException:
            logger.finish(exit_code=1)
            raise
    logger.finish()


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
    sweep = setup.sweep
    cfg = sweep.base_config(params)
    r = sweep.pretrain_resources
    cfg.train.threads, cfg.train.device, cfg.train.progress = max(1, int(r.cpus)), "cuda" if r.gpus else "cpu", False
    _run(setup, "pretrain", base_hash(cfg), params, lambda scratch: (cfg, None))


def prune_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Optuna trial: the base model (if any) with learned gates and the L0 penalty."""
    sweep = setup.sweep
    cfg = sweep.trial_config(params)
    key = base_hash(sweep.base_config(params)) if sweep.pretraining else ""
    base = setup.bases[key] if sweep.pretraining else None
    _run(setup, "prune", key, params, lambda scratch: (cfg, _base_file(base, scratch)))


def layout_trainable(params: dict[str, Any], setup: TrialSetup, run: MethodRun) -> None:
    """importance/random: the base model pruned to ``baseline.budget`` heads, evaluated or fine-tuned."""
    sweep = setup.sweep
    key = base_hash(sweep.base_config())

    def prepare(scratch: Path):
        start = scratch / "pruned_start.pt"
        cfg = pruned_start(_base_file(setup.bases[key], scratch), sweep.baseline_config(run.finetune_steps, params),
                           run.method, int(params[BUDGET]), int(params.get(LAYOUT_SEED, 0)),
                           sweep.schema.baselines.importance_batches, start, log=_trial_log,
                           sample_seed=sweep.sample_seed())
        return cfg, str(start)

    _run(setup, "prune", key, params, prepare, method=run.method)


def scratch_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """scratch: a gate trial's head layout trained from random initialisation with the base model's recipe."""
    sweep = setup.sweep
    cfg = sweep.scratch_config(parse_layout_name(params[LAYOUT]))
    _run(setup, "prune", base_hash(sweep.base_config()), params, lambda scratch: (cfg, None), method="scratch")


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

    class FailNonFiniteSearch(OptunaSearch):
        """A trial whose final objectives are not finite (it diverged) is told to Optuna as FAIL, not left
        RUNNING (Optuna refuses NaN values for a COMPLETE trial)."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            values = [(result or {}).get(m) for m in self.metric] if isinstance(self.metric, list) else []
            if result and any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                result, error = None, True
            super().on_trial_complete(trial_id, result, error)

    s = sweep.search
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
        "grid": lambda: optuna.samplers.GridSampler({d.key: d.grid() for d in sweep.space}, seed=s.seed),
    }
    storage = None
    if "://" not in sweep.experiment_dir:
        Path(sweep.experiment_dir).mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{Path(sweep.experiment_dir) / OPTUNA_FILE}")
    return FailNonFiniteSearch(
        metric=[o.metric for o in sweep.objectives], mode=[o.mode for o in sweep.objectives],
        sampler=samplers[s.sampler](), study_name=sweep.name, storage=storage,
        points_to_evaluate=sweep.points_to_evaluate() or None,
    )


def _resources(res) -> dict[str, float]:
    return {"cpu": res.cpus, "gpu": res.gpus}


def _run_config(sweep: Sweep, name: str, storage: str, keep: int, params: list[str] | None = None):
    from ray import tune

    from model.retention import CheckpointRetention, state_period

    columns = [o.metric for o in sweep.objectives] + [M.STEP]
    params = [d.key for d in sweep.space] if params is None else params
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=1,
        failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
        # Tune keeps every checkpoint; CheckpointRetention deletes old ones only when no resume can need them
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[CheckpointRetention(keep, state_period())],
        progress_reporter=tune.CLIReporter(metric_columns=columns, parameter_columns=params,
                                           max_report_frequency=30),
    )


def _fit(tuner_factory, trainable, experiment: str, resume: bool, keep: int):
    from ray import tune

    from model.retention import prune_checkpoints, state_period

    state_period()  # before Tune starts, also for a restored sweep (its callbacks come from the stored tuner)
    if tune.Tuner.can_restore(experiment):
        if not resume:
            raise SweepError(f"{experiment} already holds a sweep: pass --resume to continue it, or choose another "
                             f"name (--set name=...) or --results folder")
        print(f"resuming {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:  # with --resume too: the sweep stopped before this stage began (the driver checked it exists)
        tuner = tuner_factory()
    grid = tuner.fit()
    prune_checkpoints(grid, keep)  # the final state is saved: each trial's older checkpoints can go
    return grid


def base_experiments(sweep: Sweep) -> list[tuple[dict[str, Any], str, str]]:
    """(variant, hash, name) of every base model the sweep trains; its experiment is <storage>/pretrained/<name>."""
    keys = [(variant, base_hash(sweep.base_config(variant))) for variant in sweep.base_variants()]
    return [(variant, key, f"base-{key}") for variant, key in keys]


def pretrain_stage(sweep: Sweep, setup: TrialSetup) -> tuple[dict[str, str], list[Any]]:
    """Train (or find) every base model; returns {hash: checkpoint} and their Tune results."""
    from ray import tune

    if not sweep.pretraining:
        return {}, []
    if sweep.schema.pretrain.checkpoint is not None:
        return {base_hash(sweep.base_config()): sweep.schema.pretrain.checkpoint}, []
    bases, results = {}, []
    root = join_storage(sweep.storage, PRETRAINED_DIR)
    for variant, key, name in base_experiments(sweep):
        experiment = join_storage(root, name)
        trainable = tune.with_resources(tune.with_parameters(pretrain_trainable, setup=setup),
                                        _resources(sweep.pretrain_resources))
        fresh = not tune.Tuner.can_restore(experiment)
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
        path = result.checkpoint.path
        bases[key] = path if "://" not in root else f"{root.split('://', 1)[0]}://{path.lstrip('/')}"
        results.append(result)
    return bases, results


def prune_stage(sweep: Sweep, setup: TrialSetup, resume: bool):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(prune_trainable, setup=setup), _resources(sweep.resources))

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
    full model's, smallest first."""
    from analysis.pareto import pareto_front
    from model.config import config_from_dict

    done = gate_trials[(gate_trials["stage"] == "prune") & (gate_trials["status"] == "completed")]
    if sweep.schema.baselines.scratch_layouts == "pareto" and not done.empty:
        done = pareto_front(done, [o.metric for o in sweep.objectives], [o.mode for o in sweep.objectives])
    cfg = config_from_dict(sweep.prune_data())
    kinds = list(cfg.gates.attention)
    full = {k: [cfg.model.n_heads] * cfg.model.layers(k) for k in kinds}
    names = {layout_name(layout_heads(row, cfg, kinds)) for row in done.to_dict("records")} - {layout_name(full)}
    found = sorted(names, key=lambda name: (sum(sum(v) for v in parse_layout_name(name).values()), name))
    limit = sweep.schema.baselines.scratch_limit
    if limit is not None and len(found) > limit:  # evenly spread from the smallest to the largest
        found = [found[round(i * (len(found) - 1) / max(1, limit - 1))] for i in range(limit)]
    return found + [layout_name(full)]


def baseline_stage(sweep: Sweep, setup: TrialSetup, run: MethodRun, resume: bool, gate_trials=None):
    """One baseline method's experiment: a grid over budgets (and seeds), or over the gate trials' layouts."""
    from ray import tune

    if run.method == "scratch":
        space = {LAYOUT: tune.grid_search(scratch_layouts(sweep, gate_trials))}
        trainable = tune.with_resources(tune.with_parameters(scratch_trainable, setup=setup),
                                        _resources(sweep.pretrain_resources))
    else:
        space = {BUDGET: tune.grid_search(sweep.budgets())}
        if run.method == "random":
            space[LAYOUT_SEED] = tune.grid_search(list(range(sweep.schema.baselines.seeds)))
        trainable = tune.with_resources(tune.with_parameters(layout_trainable, setup=setup, run=run),
                                        _resources(sweep.resources))
    experiment = join_storage(sweep.storage, run.name)
    exists = tune.Tuner.can_restore(experiment)
    if exists and not resume:
        raise SweepError(f"{experiment} already holds the {run.label} trials of a sweep: pass --resume to continue "
                         f"it, or choose another name (--set name=...) or --results folder")
    print(f"method {run.label}: {experiment}", flush=True)

    def new_tuner():
        return tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=sweep.search.max_concurrent),
                          run_config=_run_config(sweep, run.name, sweep.storage, keep=sweep.schema.keep_checkpoints,
                                                 params=list(space)))

    return _fit(new_tuner, trainable, experiment, resume=exists, keep=sweep.schema.keep_checkpoints), list(space)


# --------------------------------------------------------------------------------------------------
# The trials table


def trial_row(result, stage: str, params: list[str]) -> dict[str, Any]:
    """One row of trials.csv from a Tune result: params, final and best metrics, status, paths, provenance."""
    m = dict(result.metrics or {})
    row: dict[str, Any] = {"trial_id": m.get("trial_id"), "stage": stage}
    row.update({f"param.{k}": (result.config or {}).get(k) for k in params})
    status = m.get(M.STATUS, "not started")
    if result.error is not None:
        status = "error"
    row["status"] = status
    row["error"] = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
    if status == "diverged":
        row["error"] = m.get(M.REASON) or "diverged"
    row.update({k: m.get(k) for k in TABLE_METRICS})
    per_type = sorted(k for k in m if k.startswith(M.OPEN_HEADS + "/"))
    row.update({k: m[k] for k in per_type})
    history = result.metrics_dataframe
    if history is not None and M.BLEU in history.columns and history[M.BLEU].notna().any():
        best = history.loc[history[M.BLEU].idxmax()]
        row["best_bleu"], row["best_bleu_step"] = float(best[M.BLEU]), int(best[M.STEP])
    else:
        row["best_bleu"], row["best_bleu_step"] = None, None
    row["evaluations"] = 0 if history is None else len(history)
    row["seed"], row["base"] = m.get("seed"), m.get("base")
    row["wall_seconds"] = m.get("time_total_s")
    row["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else ""
    row["trial_path"] = result.path
    row["git_commit"], row["versions"] = m.get("git_commit"), m.get("versions")
    return row


def write_trials_table(experiment_dir: str, params: list[str], grid, base_results: list[Any], method: str = "gates"):
    """trials.csv in a sweep (or method) folder (the file ``analysis/`` reads); returns the DataFrame."""
    import pandas as pd

    rows = [trial_row(r, "pretrain", params) for r in base_results]
    rows += [trial_row(r, "prune", params) for r in grid]
    df = pd.DataFrame(rows).convert_dtypes()
    df.insert(2, "method", ["base" if stage == "pretrain" else method for stage in df["stage"]])
    write_text(join_storage(experiment_dir, TRIALS_FILE), df.to_csv(index=False))
    return df


def write_text(target: str, text: str) -> None:
    """Write a file in the storage: atomically on a local disk, through pyarrow for a URI (s3://, gs://)."""
    if "://" in target:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(target)
        with fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def print_pareto(sweep: Sweep, df, label: str | None = None) -> None:
    import pandas as pd

    from analysis.pareto import pareto_front

    if label:
        print(f"\n== {label}")
    done = df[(df["stage"] == "prune") & (df["status"] == "completed")]
    objectives, directions = [o.metric for o in sweep.objectives], [o.mode for o in sweep.objectives]
    counts = df[df["stage"] == "prune"]["status"].value_counts().to_dict()
    print(f"\ntrials: {sum(counts.values())} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    for _, base in df[df["stage"] == "pretrain"].iterrows():
        print(f"base model {base['base']}: BLEU {base[M.BLEU]:.2f}, open heads {base[M.OPEN_HEADS]}")
    if done.empty:
        print("no completed trial: no Pareto front")
        return
    front = pareto_front(done, objectives, directions)
    cols = objectives + [c for c in df.columns if c.startswith("param.")] + ["trial_id"]
    print(f"Pareto-optimal trials ({len(front)} of {len(done)} completed; "
          + ", ".join(f"{o} {d}" for o, d in zip(objectives, directions)) + "):")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(front[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


# --------------------------------------------------------------------------------------------------
# Driver


def sweep_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two resolved sweeps, W&B settings aside (they may change)."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not k.startswith("wandb.") and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def start_ray(address: str | None, dashboard: bool, dashboard_host: str = "127.0.0.1") -> None:
    """Connect to a cluster (--address / RAY_ADDRESS) or start a local Ray on loopback; its dashboard (with
    --dashboard) listens on ``dashboard_host``, 127.0.0.1 unless the user names another address."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, include_dashboard=None)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=dashboard, dashboard_host=dashboard_host)
    except Exception as exc:
        if not dashboard:
            raise
        raise SweepError(f"--dashboard needs Ray's full install: pip install -e '.[cluster]' ({exc})") from exc


def _sweep_record(sweep: Sweep, run: MethodRun) -> dict[str, Any]:
    """sweep.json of one method folder: the resolved sweep, and which of its methods the folder holds."""
    record = schema_dict(sweep)
    if len(sweep.method_runs()) > 1:
        record.update(label=run.label, run={"method": run.method, "finetune_steps": run.finetune_steps,
                                            "name": run.name})
    return record


# the baselines' settings each method's trials depend on (methods and fine-tuning variants may be added later)
BASELINE_KEYS = {"gates": (), "importance": ("budgets", "importance_batches"), "random": ("budgets", "seeds"),
                 "scratch": ("scratch_layouts", "scratch_limit", "scratch_set")}


def _settings_of(run: MethodRun, record: dict[str, Any]) -> dict[str, Any]:
    """The part of a recorded sweep that decides the trials of one method folder."""
    keys = BASELINE_KEYS[run.method] + (("set",) if run.finetune_steps else ())
    out = {k: v for k, v in record.items() if k not in ("label", "run", "method", "baselines")}
    out["baselines"] = {k: v for k, v in (record.get("baselines") or {}).items() if k in keys}
    return out


def _check_resume(sweep: Sweep, resume: bool) -> None:
    """Refuse before anything starts: a finished folder without --resume, --resume with nothing, a changed sweep.

    A sweep exists once one of its base models or method folders does (it may have stopped during pretraining)."""
    from ray import tune

    folders = [join_storage(sweep.storage, run.name) for run in sweep.method_runs()]
    exists = any(tune.Tuner.can_restore(folder) for folder in folders)
    if exists and not resume:
        raise SweepError(f"{sweep.experiment_dir} already holds a sweep: pass --resume to continue it, or choose "
                         f"another name (--set name=...) or --results folder")
    bases = [join_storage(sweep.storage, PRETRAINED_DIR, name) for _, _, name in base_experiments(sweep)
             ] if sweep.pretraining and sweep.schema.pretrain.checkpoint is None else []
    if resume and not exists and not any(tune.Tuner.can_restore(base) for base in bases):
        raise SweepError(f"--resume: there is no sweep in {sweep.experiment_dir} to resume")
    if "://" in sweep.storage:
        return  # the recorded sweeps below are compared on local storage
    for run, folder in zip(sweep.method_runs(), folders):
        recorded = Path(folder, SWEEP_FILE)
        if resume and recorded.exists():
            old, new = (_settings_of(run, record) for record in (json.loads(recorded.read_text()), schema_dict(sweep)))
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


def run_sweep(sweep: Sweep, resume: bool = False, address: str | None = None, dashboard: bool = False,
              dashboard_host: str = "127.0.0.1"):
    """The base models, then each method's trials and table; returns {method run: trials DataFrame}."""
    import ray

    _check_resume(sweep, resume)
    if not (address or os.environ.get("RAY_ADDRESS")):  # a local Ray: this machine's GPUs are all there is
        import torch

        local = float(torch.cuda.device_count())
        check_gpus(sweep.resources.gpus, local, False)
        check_gpus(sweep.pretrain_resources.gpus, local, False, "pretrain.resources.gpus")
        check_corpus_files(sweep)
    mode = resolve_mode(sweep.schema.wandb.mode)
    if mode == "online" and (reason := unreachable_backend()):
        print(f"W&B backend {reason}: every run of this sweep is kept offline (upload later with `wandb sync`)",
              flush=True)
        mode = "offline"
    local_storage = "://" not in sweep.storage
    wandb_dir = str(Path(sweep.experiment_dir) / "wandb") if local_storage else None
    if mode != "disabled":
        os.environ["WANDB_MODE"] = mode  # before Ray starts, so that workers inherit it
        if wandb_dir:
            os.environ["WANDB_DIR"] = wandb_dir
    started = not ray.is_initialized()
    if started:
        start_ray(address, dashboard, dashboard_host)
    tables: dict[MethodRun, Any] = {}
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        check_gpus(sweep.resources.gpus, gpus, sweep.resources.autoscale)
        check_gpus(sweep.pretrain_resources.gpus, gpus, sweep.pretrain_resources.autoscale, "pretrain.resources.gpus")
        runs = sweep.method_runs()
        provenance = {"git_commit": git_commit(), "versions": json.dumps(package_versions(), sort_keys=True)}
        setup = TrialSetup(sweep, {}, mode, wandb_dir, provenance)
        setup.bases, base_results = pretrain_stage(sweep, setup)
        for run in runs:
            folder = join_storage(sweep.storage, run.name)
            write_text(join_storage(folder, SWEEP_FILE), json.dumps(_sweep_record(sweep, run), indent=2) + "\n")
            if run.method == "gates":
                grid = prune_stage(sweep, setup, resume)
                params = [d.key for d in sweep.space]
            else:
                grid, params = baseline_stage(sweep, setup, run, resume, tables.get(runs[0]))
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
    if run.method in ("importance", "random"):
        return len(sweep.budgets()) * (sweep.schema.baselines.seeds if run.method == "random" else 1)
    return int((df["stage"] == "prune").sum())  # scratch: one per layout, known once the gate trials finished


def unfinished_trials(sweep: Sweep, run: MethodRun, df) -> int:
    """Trials of a method folder that did not finish (neither completed nor diverged), or never started."""
    prune = df[df["stage"] == "prune"]
    unfinished = int((~prune["status"].isin(["completed", "diverged"])).sum())
    return unfinished + max(expected_trials(sweep, run, df) - len(prune), 0)


def write_reports(sweep: Sweep, tables: dict[MethodRun, Any]) -> None:
    """The gate sweep's report, and with several methods their fronts and hypervolumes compared."""
    from analysis.load import load_sweep as load_results
    from analysis.load import load_sweeps
    from analysis.report import compare_report, sweep_report

    try:
        for run in tables:
            if run.method == "gates":
                print(f"\nreport: {sweep_report(load_results(sweep.experiment_dir))}")
        if len(tables) > 1:
            folders = [Path(sweep.storage, run.name) for run in tables]
            methods = compare_report(load_sweeps(folders, [run.label for run in tables]), folders[0] / "report",
                                     stem="methods")
            print(f"methods compared: {methods}")
    except Exception as exc:
        print(f"\nthe report failed ({type(exc).__name__}: {exc}); the results are intact: "
              f"python -m analysis.report {sweep.experiment_dir}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python trainable.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (and its base models)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="the same sweep, tiny: 2 trials x 2 evaluations of a small model (into <name>-smoke)")
    parser.add_argument("--address", default=None, help="Ray cluster to use (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--results", default=None, metavar="DIR", help="results root (default: the sweep's storage)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key, e.g. --set search.num_samples=20 (repeatable)")
    parser.add_argument("--dashboard", action="store_true", help="local Ray: serve the dashboard (on 127.0.0.1)")
    parser.add_argument("--dashboard-host", default="127.0.0.1", metavar="ADDRESS",
                        help="with --dashboard: the address it listens on (0.0.0.0: every network interface; "
                             "anyone who reaches it can submit jobs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        sweep = load_sweep(args.sweep, args.overrides, smoke_test=args.smoke_test, storage=args.results)
        tables = run_sweep(sweep, resume=args.resume, address=args.address, dashboard=args.dashboard,
                           dashboard_host=args.dashboard_host)
    except (ConfigError, SweepError, TrainingError, CheckpointError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run, df in tables.items():
        print_pareto(sweep, df, run.label if len(tables) > 1 else None)
    if "://" not in sweep.experiment_dir:
        write_reports(sweep, tables)
    print(f"\nsweep {sweep.name} took {time.perf_counter() - start:.0f} s; results: "
          + ", ".join(join_storage(sweep.storage, run.name) for run in tables)
          + f" (table: {TRIALS_FILE} in each)")
    short = [f"{unfinished_trials(sweep, run, df)} of {expected_trials(sweep, run, df)} {run.label} trials"
             for run, df in tables.items() if unfinished_trials(sweep, run, df)]
    short += [f"the {run.label} trials" for run in sweep.method_runs() if run not in tables]
    if short:
        command = list(sys.argv[1:] if argv is None else argv)
        command += [] if "--resume" in command else ["--resume"]
        print(f"{', '.join(short)} did not finish; continue the sweep with: python trainable.py {' '.join(command)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
