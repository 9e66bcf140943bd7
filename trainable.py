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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.load import SWEEP_FILE, TRIALS_FILE
from model import metrics as M
from model.checkpoint import CheckpointError, git_commit, package_versions
from model.config import ConfigError, flatten
from model.corpora import CorpusError
from model.sweep import Sweep, base_hash, check_gpus, join_storage, load_sweep, schema_dict
from model.train import TrainingError
from model.trial import checkpoint_file, last_record, run_trial
from model.wandb_log import TrialLogger, resolve_mode

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


def _run(setup: TrialSetup, cfg, stage: str, base_key: str, base: str | None, params: dict[str, Any]) -> None:
    """Shared body of both trainables: restore, train, report to Tune and W&B.

    The run's own folder is scratch space outside the trial folder (Ray copies the trial folder to the storage):
    everything worth keeping leaves with the reports, so the scratch folder goes when the trial ends.
    """
    from ray import tune

    ctx = tune.get_context()
    sweep = setup.sweep
    logger = TrialLogger(
        setup.wandb_mode, sweep.schema.wandb.project, sweep.wandb_group, run_id=f"{sweep.name}-{ctx.get_trial_id()}",
        name=ctx.get_trial_name(), directory=setup.wandb_dir or ctx.get_trial_dir(), entity=sweep.schema.wandb.entity,
        tags=sweep.schema.wandb.tags, job_type=stage, init_timeout=sweep.schema.wandb.init_timeout,
        upload_timeout=sweep.schema.wandb.upload_timeout,
        config={**params, "stage": stage, "base": base_key, "config": cfg.to_dict(), **setup.provenance},
        log=_trial_log,
    )
    constant = {"stage": stage, "base": base_key, "seed": cfg.train.seed, **setup.provenance}

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        record = {**{o.metric: math.nan for o in sweep.objectives}, **metrics, **constant}  # NaN: Optuna FAIL
        if folder is None:
            tune.report(record)
        else:
            tune.report(record, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            gates, samples = last_record(folder / "gates.jsonl"), last_record(folder / "samples.jsonl")
            logger.log(metrics, step=int(metrics[M.STEP]), gates=(gates or {}).get("gates"),
                       samples=(samples or {}).get("samples"))

    restore = tune.get_checkpoint()
    try:
        with tempfile.TemporaryDirectory(prefix=f"headsweep-{ctx.get_trial_id()}-",
                                         dir=os.environ.get("HEADSWEEP_SCRATCH")) as scratch:
            run_dir = Path(scratch) / "run"
            if restore is not None:
                with restore.as_directory() as folder:
                    run_trial(cfg, run_dir, report, restore_from=folder, log=_trial_log)
            else:
                run_trial(cfg, run_dir, report, init_from=_base_file(base, Path(scratch)), log=_trial_log)
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
    _run(setup, cfg, "pretrain", base_hash(cfg), None, params)


def prune_trainable(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Optuna trial: the base model (if any) with learned gates and the L0 penalty."""
    sweep = setup.sweep
    cfg = sweep.trial_config(params)
    key = base_hash(sweep.base_config(params)) if sweep.pretraining else ""
    _run(setup, cfg, "prune", key, setup.bases[key] if sweep.pretraining else None, params)


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


def _run_config(sweep: Sweep, name: str, storage: str, keep: int):
    from ray import tune

    columns = [o.metric for o in sweep.objectives] + [M.STEP]
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=1,
        failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        progress_reporter=tune.CLIReporter(metric_columns=columns, parameter_columns=[d.key for d in sweep.space],
                                           max_report_frequency=30),
    )


def _fit(tuner_factory, trainable, experiment: str, resume: bool):
    from ray import tune

    if tune.Tuner.can_restore(experiment):
        if not resume:
            raise SweepError(f"{experiment} already holds a sweep: pass --resume to continue it, or choose another "
                             f"name (--set name=...) or --results folder")
        print(f"resuming {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        if resume:
            raise SweepError(f"--resume: there is no sweep in {experiment} to resume")
        tuner = tuner_factory()
    return tuner.fit()


def pretrain_stage(sweep: Sweep, setup: TrialSetup) -> tuple[dict[str, str], list[Any]]:
    """Train (or find) every base model; returns {hash: checkpoint} and their Tune results."""
    from ray import tune

    if not sweep.pretraining:
        return {}, []
    if sweep.schema.pretrain.checkpoint is not None:
        return {base_hash(sweep.base_config()): sweep.schema.pretrain.checkpoint}, []
    bases, results = {}, []
    root = join_storage(sweep.storage, PRETRAINED_DIR)
    for variant in sweep.base_variants():
        key = base_hash(sweep.base_config(variant))
        name = f"base-{key}"
        experiment = join_storage(root, name)
        trainable = tune.with_resources(tune.with_parameters(pretrain_trainable, setup=setup),
                                        _resources(sweep.pretrain_resources))
        fresh = not tune.Tuner.can_restore(experiment)
        print(f"base model {name} ({variant or 'the base config'}): "
              + ("training" if fresh else "found, reusing or finishing it"), flush=True)
        def new_tuner(trainable=trainable, variant=variant, name=name):
            return tune.Tuner(trainable, param_space=dict(variant), tune_config=tune.TuneConfig(num_samples=1),
                              run_config=_run_config(sweep, name, root, keep=1))

        grid = _fit(new_tuner, trainable, experiment, resume=not fresh)
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

    return _fit(new_tuner, trainable, sweep.experiment_dir, resume)


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


def write_trials_table(sweep: Sweep, grid, base_results: list[Any]):
    """trials.csv in the sweep folder (the file ``analysis/`` reads); returns the DataFrame."""
    import pandas as pd

    params = [d.key for d in sweep.space]
    rows = [trial_row(r, "pretrain", params) for r in base_results]
    rows += [trial_row(r, "prune", params) for r in grid]
    df = pd.DataFrame(rows).convert_dtypes()
    write_text(join_storage(sweep.experiment_dir, TRIALS_FILE), df.to_csv(index=False))
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


def print_pareto(sweep: Sweep, df) -> None:
    import pandas as pd

    from analysis.pareto import pareto_front

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


def start_ray(address: str | None, dashboard: bool) -> None:
    """Connect to a cluster (--address / RAY_ADDRESS) or start a local Ray on loopback."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, include_dashboard=None)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=dashboard, dashboard_host="127.0.0.1")
    except Exception as exc:
        if not dashboard:
            raise
        raise SweepError(f"--dashboard needs Ray's full install: pip install -e '.[cluster]' ({exc})") from exc


def run_sweep(sweep: Sweep, resume: bool = False, address: str | None = None, dashboard: bool = False):
    """Both stages and the table; returns the trials DataFrame."""
    import ray

    mode = resolve_mode(sweep.schema.wandb.mode)
    local_storage = "://" not in sweep.storage
    wandb_dir = str(Path(sweep.experiment_dir) / "wandb") if local_storage else None
    if mode != "disabled":
        os.environ["WANDB_MODE"] = mode  # before Ray starts, so that workers inherit it
        if wandb_dir:
            os.environ["WANDB_DIR"] = wandb_dir
    if "://" not in sweep.experiment_dir:  # refuse before anything starts (a cloud folder is checked by Tune)
        exists = (Path(sweep.experiment_dir) / "tuner.pkl").exists()
        if exists and not resume:
            raise SweepError(f"{sweep.experiment_dir} already holds a sweep: pass --resume to continue it, or choose "
                             f"another name (--set name=...) or --results folder")
        if resume and not exists:
            raise SweepError(f"--resume: there is no sweep in {sweep.experiment_dir} to resume")
        recorded = Path(sweep.experiment_dir) / SWEEP_FILE
        if resume and recorded.exists():
            changed = sweep_differences(json.loads(recorded.read_text()), schema_dict(sweep))
            if changed:
                raise SweepError(f"--resume: the sweep differs from the one in {recorded}: {'; '.join(changed)}. "
                                 f"Resume it unchanged, or start a new sweep (--set name=...).")
    if not (address or os.environ.get("RAY_ADDRESS")):  # a local Ray: this machine's GPUs are all there is
        import torch

        local = float(torch.cuda.device_count())
        check_gpus(sweep.resources.gpus, local, False)
        check_gpus(sweep.pretrain_resources.gpus, local, False, "pretrain.resources.gpus")
    started = not ray.is_initialized()
    if started:
        start_ray(address, dashboard)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        check_gpus(sweep.resources.gpus, gpus, sweep.resources.autoscale)
        check_gpus(sweep.pretrain_resources.gpus, gpus, sweep.pretrain_resources.autoscale, "pretrain.resources.gpus")
        write_text(join_storage(sweep.experiment_dir, SWEEP_FILE), json.dumps(schema_dict(sweep), indent=2) + "\n")
        provenance = {"git_commit": git_commit(), "versions": json.dumps(package_versions(), sort_keys=True)}
        setup = TrialSetup(sweep, {}, mode, wandb_dir, provenance)
        setup.bases, base_results = pretrain_stage(sweep, setup)
        grid = prune_stage(sweep, setup, resume)
        df = write_trials_table(sweep, grid, base_results)
    finally:
        if started:
            ray.shutdown()
    return df


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
    parser.add_argument("--dashboard", action="store_true", help="local Ray: serve the dashboard on 127.0.0.1")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        sweep = load_sweep(args.sweep, args.overrides, smoke_test=args.smoke_test, storage=args.results)
        df = run_sweep(sweep, resume=args.resume, address=args.address, dashboard=args.dashboard)
    except (ConfigError, SweepError, TrainingError, CheckpointError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_pareto(sweep, df)
    if "://" not in sweep.experiment_dir:
        from analysis.load import load_sweep as load_results
        from analysis.report import sweep_report

        try:
            print(f"\nreport: {sweep_report(load_results(sweep.experiment_dir))}")
        except Exception as exc:
            print(f"\nthe report failed ({type(exc).__name__}: {exc}); the results are intact: "
                  f"python -m analysis.report {sweep.experiment_dir}", file=sys.stderr)
    print(f"\nsweep {sweep.name} took {time.perf_counter() - start:.0f} s; results: {sweep.experiment_dir}"
          f" (table: {join_storage(sweep.experiment_dir, TRIALS_FILE)})")
    prune = df[df["stage"] == "prune"]
    unfinished = int((~prune["status"].isin(["completed", "diverged"])).sum())
    missing = sweep.search.num_samples - len(prune)
    if unfinished or missing > 0:
        command = list(sys.argv[1:] if argv is None else argv)
        command += [] if "--resume" in command else ["--resume"]
        print(f"{unfinished + max(missing, 0)} of {sweep.search.num_samples} trials did not finish; continue the sweep "
              f"with: python trainable.py {' '.join(command)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
