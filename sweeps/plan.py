"""``headsweep sweep SWEEP.yaml --dry-run``: the resolved plan of a sweep, printed without starting (or importing)
Ray: the space, the objectives, the trials, the stages and their folders, the base models and whether they are
already trained."""

from __future__ import annotations

from typing import Any

from .results import PRETRAINED_DIR, join_storage
from .schema import GATES, GATES_BUDGET, IMPORTANCE, ITERATIVE, RANDOM, SCRATCH
from .storage import exists
from .sweep import Sweep, base_hash
from .wandb_log import resolve_mode

TUNER_FILE = "tuner.pkl"  # what Ray Tune writes into an experiment folder it can restore


def _exists(uri: str) -> bool:
    """A file in the results storage (a local path or a URI) exists; unreachable storage counts as "not found",
    so that a dry run never fails on it."""
    try:
        return exists(uri)
    except Exception:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid for unreachable or unknown storage
        return False


def _restorable(folder: str) -> bool:
    return _exists(join_storage(folder, TUNER_FILE))


def _dimension(d: Any) -> str:
    return f"{d.kind} {list(d.args)}"


def base_models(sweep: Sweep) -> list[dict[str, Any]]:
    """The base models a sweep needs: variant, hash, experiment folder, and whether it exists already."""
    if not sweep.pretraining:
        return []
    if sweep.schema.pretrain.checkpoint is not None:
        return [{"variant": {}, "hash": base_hash(sweep.base_config()), "folder": sweep.schema.pretrain.checkpoint,
                 "cached": True, "given": True}]
    out = []
    for variant, key, name in sweep.base_experiments():
        folder = join_storage(sweep.storage, PRETRAINED_DIR, name)
        out.append({"variant": variant, "hash": key, "folder": folder, "cached": _restorable(folder), "given": False})
    return out


def describe_plan(sweep: Sweep) -> str:
    """The plan as text: what a run of this sweep would do, in order."""
    s, trial = sweep.search, sweep.trial_config({})
    lines = [f"sweep {sweep.name}" + (" (smoke test)" if sweep.smoke_test else "")
             + (f" from {sweep.path}" if sweep.path else ""), f"storage: {sweep.storage}"]
    lines.append("objectives: " + ", ".join(f"{o.metric} {o.mode}" for o in sweep.objectives))
    lines.append("space:")
    lines += [f"  {d.key}: {_dimension(d)}" for d in sweep.space]
    lines.append(f"search: {s.sampler} (seed {s.seed}), {s.num_samples} trials, {s.max_concurrent} at once, "
                 f"{s.max_failures} retries each, {len(s.points_to_evaluate)} given first points, "
                 f"trial seeds {s.trial_seeds}")
    for c in sweep.schema.constraints:
        bound = next((k, v) for k, v in vars(c).items() if k != "metric" and v is not None)
        value = f"the base model's {bound[1]:+g}" if bound[0].endswith("_relative_to_base") else f"{bound[1]:g}"
        lines.append(f"constraint: {c.metric} {'>=' if bound[0].startswith('min') else '<='} {value} "
                     f"(an Optuna constraint)")
    c = s.scheduler
    if c.kind != "none":
        from .scheduler import rungs

        t = trial.train
        steps = rungs(c.grace_steps or t.eval_every, c.reduction_factor, t.max_steps)
        lines.append(f"early stopping: MO-ASHA, rungs at steps {steps}, the best 1/{c.reduction_factor:g} at each "
                     f"go on")
    lat = sweep.schema.latency
    if lat.enabled:
        lines.append(f"latency: each completed trial's pruned model timed against its base model (beam {lat.beam_size},"
                     f" batches {lat.batch_sizes}, the first {lat.sentences} sources, {lat.rounds} alternating rounds)")
    r, p = sweep.resources, sweep.pretrain_resources
    lines.append(f"resources per trial: {r.cpus:g} CPUs, {r.gpus:g} GPUs; per base model: {p.cpus:g} CPUs, "
                 f"{p.gpus:g} GPUs" + (" (autoscaled)" if r.autoscale else ""))
    lines.append(f"W&B: {resolve_mode(sweep.schema.wandb.mode)} (project {sweep.schema.wandb.project}, "
                 f"group {sweep.wandb_group})")
    lines.append("stage pretrain:")
    bases = base_models(sweep)
    if not bases:
        lines.append("  none: each trial trains a gated model from random initialisation")
    for b in bases:
        what = ", ".join(f"{k}={v}" for k, v in b["variant"].items()) or "the base config"
        state = "given checkpoint" if b["given"] else ("found: reused (or finished)" if b["cached"] else "to train")
        lines.append(f"  base-{b['hash']} ({what}): {state}; {b['folder']}")
    lines.append(f"stage prune: gates on {', '.join(trial.gates.attention)} ({sweep.gated_heads()} heads), "
                 f"train.freeze {list(trial.train.freeze)}, {trial.train.max_steps} steps, evaluation every "
                 f"{trial.train.eval_every} {trial.train.eval_unit} on {trial.eval.split}")
    lines.append("methods, in order:")
    for run in sweep.method_runs():
        folder = join_storage(sweep.storage, run.name)
        b = sweep.schema.baselines
        grid = f"{len(sweep.budgets())} budgets {sweep.budgets()} x {b.seeds} seeds"
        count = {GATES: f"{s.num_samples} trials", GATES_BUDGET: f"{grid}, {run.finetune_steps} steps",
                 IMPORTANCE: grid, ITERATIVE: grid, RANDOM: grid,
                 SCRATCH: f"the gate front's layouts{' + the full model' * b.scratch_full}, "
                            f"x {b.scratch_seeds} seeds, each on {sweep.scratch_resources.cpus:g} CPUs, "
                            f"{sweep.scratch_resources.gpus:g} GPUs"}[run.method]
        state = " (holds a sweep: needs --resume)" if _restorable(folder) else ""
        lines.append(f"  {run.label}: {count}; {folder}{state}")
    if sweep.schema.test.enabled:
        t = sweep.schema.test
        lines.append(f"then the test split: the base model, each folder's validation front and every budget point, "
                     f"beam {t.beam_size}; comparison with {t.bootstrap} paired bootstrap resamples")
    return "\n".join(lines)
