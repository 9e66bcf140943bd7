"""Resume checks, before anything starts: a finished folder is never overwritten, --resume needs something to
resume, a damaged Tune state or Optuna study is refused, and a sweep changed in what its trials learn is refused with
the keys that differ. Each method folder records its resolved sweep in sweep.json for that."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from model.config import flatten

from .results import PRETRAINED_DIR, SWEEP_FILE, is_record, join_storage
from .schema import (
    GATES,
    GATES_BUDGET,
    IMPORTANCE,
    ITERATIVE,
    RANDOM,
    RUN_LOCATION_KEYS,
    SCRATCH,
    MethodRun,
    SweepSchema,
)
from .storage import exists, ray_storage, read_bytes
from .study import StateError, check_resumable
from .sweep import Sweep, schema_dict
from .validate import absolute_paths


class SweepError(RuntimeError):
    """The sweep cannot start or continue (nothing to resume, a folder in use, a failed base model)."""


def can_restore(experiment: str) -> bool:
    """Whether ``experiment`` (a folder or URI) holds a Tune experiment's state."""
    from ray import tune

    path, fs = ray_storage(experiment)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def _where_not_what(key: str) -> bool:
    """A recorded sweep key that says where or how fast trials run (W&B, folders, threads, the CPUs and GPUs a trial
    or a base model is given, the results root the folder was moved to, whether a worker process runs several trials)
    or how they are scored afterwards (test.*, and the timing of a finished trial's model: latency.*), not what they
    learn."""
    return key.startswith(("wandb.", "test.", "latency.", "resources.", "pretrain.resources.",
                            "baselines.scratch_resources.")) or key in (
        "storage", "storage_shared", "search.reuse_actors") or any(
        key == f"{p}{k}" for p in ("base.", "pretrain.set.", "prune.set.") for k in RUN_LOCATION_KEYS)


def sweep_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two resolved sweeps, W&B settings and the run-location keys
    (corpus and cache folders, threads, device) aside: they may change between a sweep and its resume."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not _where_not_what(k) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def sweep_record(sweep: Sweep, run: MethodRun) -> dict[str, Any]:
    """sweep.json of one method folder: the resolved sweep, and which of its methods the folder holds."""
    record = schema_dict(sweep)
    if len(sweep.method_runs()) > 1:
        record.update(label=run.label, run={"method": run.method, "finetune_steps": run.finetune_steps,
                                            "name": run.name})
    return record


# the baselines' settings each method's trials depend on (methods and fine-tuning variants may be added later)
BASELINE_KEYS = {GATES: (), GATES_BUDGET: ("budgets", "seeds", "finetune_steps"),
                 IMPORTANCE: ("budgets", "seeds", "importance_batches"),
                 ITERATIVE: ("budgets", "seeds", "importance_batches", "iterative_fraction"),
                 RANDOM: ("budgets", "seeds"),
                 SCRATCH: ("scratch_layouts", "scratch_limit", "scratch_set", "scratch_seeds", "scratch_full")}
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


def with_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded sweep with the schema's default for every section and key it lacks: a sweep recorded before a key
    existed ran as its default does (the keys added since are defined so), so that such a sweep resumes."""
    def merge(default: Any, given: Any) -> Any:
        if isinstance(default, dict) and isinstance(given, dict):
            return {**{k: v for k, v in default.items() if k not in given},
                    **{k: merge(default.get(k), v) for k, v in given.items()}}
        return given

    return merge(dataclasses.asdict(SweepSchema()), record)


def check_resume(sweep: Sweep, resume: bool) -> None:
    """Refuse before anything starts: a finished folder without --resume, --resume with nothing, a changed sweep.

    A sweep exists once one of its base models or method folders does (it may have stopped during pretraining)."""
    folders = [join_storage(sweep.storage, run.name) for run in sweep.method_runs()]
    started = any(can_restore(folder) or is_record(folder) for folder in folders)
    if started and not resume:
        raise SweepError(f"{sweep.experiment_dir} already holds a sweep: pass --resume to continue it, or choose "
                         f"another name (--set name=...) or --results folder")
    bases = [join_storage(sweep.storage, PRETRAINED_DIR, name) for _, _, name in sweep.base_experiments()
             ] if sweep.pretraining and sweep.schema.pretrain.checkpoint is None else []
    if resume and not started and not any(can_restore(base) for base in bases):
        raise SweepError(f"--resume: there is no sweep in {sweep.experiment_dir} to resume")
    for folder in folders:
        if resume and can_restore(folder):
            try:
                check_resumable(folder)
            except StateError as exc:
                raise SweepError(f"--resume: {exc}") from None
    for run, folder in zip(sweep.method_runs(), folders):
        recorded = join_storage(folder, SWEEP_FILE)
        if resume and exists(recorded):
            old = _settings_of(run, with_defaults(with_absolute_paths(json.loads(read_bytes(recorded)))))
            new = _settings_of(run, schema_dict(sweep))
            changed = sweep_differences(old, new)
            if changed:
                raise SweepError(f"--resume: the sweep differs from the one in {recorded}: {'; '.join(changed)}. "
                                 f"Resume it unchanged, or start a new sweep (--set name=...).")
