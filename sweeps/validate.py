"""Loading a sweep YAML: read, (for ``--smoke-test``) shrink, and validate completely before Ray starts. No Ray here.

:func:`load_sweep` returns a :class:`~sweeps.sweep.Sweep`; every problem is a :class:`~model.config.ConfigError`
naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

from model import metrics as M
from model.config import Config, ConfigError, apply_overrides, config_from_dict, flatten, from_dict, read_yaml, require

from .constraints import RELATIVE_METRICS
from .results import BUDGET, PRETRAIN, STAGES
from .schema import (
    BUDGET_METHODS,
    GATES,
    GATES_BUDGET,
    METHODS,
    OBJECTIVE_METRICS,
    SCRATCH,
    SweepSchema,
    is_base_key,
    parse_dimension,
)
from .sweep import Sweep, _with, resolve_storage

# --------------------------------------------------------------------------------------------------
# Smoke test: the same sweep, tiny


SMOKE_EVAL_EVERY = 5


def smoke_shrink(raw: dict[str, Any], base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shrink a sweep to 2 trials x 2 evaluations of a tiny model on little data, on the CPU."""
    raw, base = copy.deepcopy(raw), copy.deepcopy(base)
    tiny = {
        "model.d_model": 32, "model.d_ff": 64, "model.encoder_layers": 2, "model.decoder_layers": 2,
        "model.n_heads": 4, "model.max_positions": 256,
        "data.synthetic.train_size": 400, "data.synthetic.valid_size": 16, "data.synthetic.test_size": 16,
        "data.max_len": 64, "data.vocab_size": min(int(flatten(base).get("data.vocab_size", 1000)), 1000),
        "train.max_steps": 2 * SMOKE_EVAL_EVERY, "train.eval_every": SMOKE_EVAL_EVERY, "train.eval_unit": "steps",
        "train.log_every": 2,
        "train.warmup_steps": 2, "train.max_epochs": None, "train.max_minutes": None, "train.precision": "fp32",
        "train.compile": False, "eval.max_sentences": 16, "eval.beam_size": 1, "eval.samples": 1,
    }
    if flatten(base).get("data.corpus", "synthetic") == "synthetic":
        tiny["data.vocab_size"] = 200
    base = _with(base, tiny)
    for stage in STAGES:  # the sweep sections named after the stages
        section = raw.setdefault(stage, {}) or {}
        raw[stage] = section
        if isinstance(section, dict) and isinstance(section.get("set"), dict):
            section["set"] = {k: v for k, v in flatten(section["set"]).items() if k not in tiny and
                              not k.startswith(("model.", "data.synthetic."))}
        if isinstance(section, dict) and stage == PRETRAIN:
            section.pop("resources", None)
            section.pop("checkpoint", None)
    baselines = raw.get("baselines")
    if isinstance(baselines, dict):
        baselines.pop("budgets", None)  # the smoke test's own budget (Sweep.budgets)
        baselines["scratch_limit"] = 1
        baselines["scratch_full"] = True  # two tiny trials may close no head: the full layout is then all there is
        baselines.pop("scratch_resources", None)  # every smoke trial on one CPU
        for key in ("seeds", "scratch_seeds"):
            if isinstance(baselines.get(key), int):
                baselines[key] = 1
        steps = baselines.get("finetune_steps")
        if isinstance(steps, list) and steps and all(isinstance(n, int) for n in steps):  # the longest only
            baselines["finetune_steps"] = [min(max(steps), 2 * SMOKE_EVAL_EVERY)]
        for key in ("set", "scratch_set"):
            if isinstance(baselines.get(key), dict):
                baselines[key] = {k: v for k, v in flatten(baselines[key]).items() if k not in tiny}
    search = raw.setdefault("search", {}) or {}
    raw["search"] = search
    if isinstance(search, dict):
        search["num_samples"] = 2
        search["max_concurrent"] = 2
        search["max_failures"] = 0
        points = search.get("points_to_evaluate")
        if isinstance(points, list):
            search["points_to_evaluate"] = points[:2]
    if isinstance(raw.get("space"), dict):  # tiny models: searched model sizes keep their first choice
        for key in list(raw["space"]):
            if key.startswith("model.") and key not in ("model.encoder_layers", "model.decoder_layers"):
                raw["space"].pop(key)
    raw["resources"] = {"cpus": 1, "gpus": 0}
    wandb = raw.get("wandb") if isinstance(raw.get("wandb"), dict) else {}
    if wandb.get("mode", "auto") != "disabled":
        wandb["mode"] = "offline"
    raw["wandb"] = wandb
    test = raw.get("test")
    if isinstance(test, dict):
        test.update(beam_size=1, max_sentences=16, bootstrap=100)
    raw["name"] = f"{raw.get('name') or 'sweep'}-smoke"
    raw["keep_checkpoints"] = 1
    return raw, base


def _stage_config(where: str, data: dict[str, Any]) -> Config:
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_sweep(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    smoke_test: bool = False,
    storage: str | None = None,
    data_dir: str | None = None,
) -> Sweep:
    """Read, (optionally) shrink and validate a sweep YAML; raise :class:`ConfigError` on any problem.

    ``storage`` replaces the sweep's results root; ``data_dir`` (an absolute folder) sets ``data.data_dir`` of the
    base config, and so of every stage (it is no part of a base model's hash)."""
    path = Path(path)
    try:
        raw = apply_overrides(read_yaml(path), list(overrides or []))
        raw.setdefault("name", path.stem)
        return sweep_from_dict(raw, base_dir=path.parent, path=path, smoke_test=smoke_test, storage=storage,
                               data_dir=data_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_base(raw_base: Any, base_dir: Path) -> dict[str, Any]:
    if raw_base is None:
        return {}
    if isinstance(raw_base, str):
        base_path = (base_dir / os.path.expandvars(os.path.expanduser(raw_base))).resolve()
        if not base_path.is_file():
            raise ConfigError(f"Invalid setting for `base`: {raw_base!r}. Allowed: a run config file "
                              f"(relative to {base_dir}) or an inline mapping; {base_path} does not exist.")
        try:
            return read_yaml(base_path)
        except ConfigError as exc:
            raise ConfigError(f"base {base_path}: {exc}") from None
    if isinstance(raw_base, dict):
        return copy.deepcopy(raw_base)
    raise ConfigError(f"Invalid setting for `base`: {raw_base!r}. Allowed: a path to a run config or a mapping.")


# Run-config keys that name a place on disk: made absolute on the driver, because a trial runs in Tune's trial folder
# (its working directory), on whichever node
PATH_KEYS = ("data.data_dir", "data.cache_dir", "data.files.train", "data.files.valid", "data.files.test")


def absolute_paths(values: dict[str, Any], nested: bool = True) -> dict[str, Any]:
    """``values`` (a run-config mapping, or a flat one of dotted keys) with each path of :data:`PATH_KEYS`
    expanded ($VARS, ~) and made absolute against the driver's working folder. A path naming an unset variable is
    left as it is, for the corpus to report."""
    flat = flatten(values) if nested else values
    fixed = {}
    for key in PATH_KEYS:
        value = flat.get(key)
        if isinstance(value, str) and value and "://" not in value:
            expanded = os.path.expandvars(os.path.expanduser(value))
            if "$" not in expanded:
                fixed[key] = os.path.abspath(expanded)
    if not fixed:
        return values
    return _with(values, fixed) if nested else {**values, **fixed}


def sweep_from_dict(
    raw: dict[str, Any],
    base_dir: Path = Path("."),
    path: Path | None = None,
    smoke_test: bool = False,
    storage: str | None = None,
    data_dir: str | None = None,
) -> Sweep:
    """The validated sweep of a YAML mapping: 1) the schema, 2) the two stages, 3) the space at its extremes,
    4) objectives, search and resources, 5) the methods and the first points."""
    raw = copy.deepcopy(raw)
    base = _read_base(raw.get("base"), base_dir)
    if data_dir is None and os.environ.get("HEADSWEEP_DATA") and "data.data_dir" not in flatten(base):
        data_dir = os.environ["HEADSWEEP_DATA"]  # the driver's; a trial on another node has its own environment
    if data_dir is not None:
        base = _with(base, {"data.data_dir": data_dir})
    base = absolute_paths(base)
    if smoke_test:
        raw, base = smoke_shrink(raw, base)
    for stage, key in (("pretrain", "set"), ("prune", "set"), ("baselines", "set"), ("baselines", "scratch_set")):
        section = raw.get(stage)  # `set` may be written nested or with dotted keys
        if isinstance(section, dict) and isinstance(section.get(key), dict):
            section[key] = absolute_paths(flatten(section[key]), nested=False)
    schema: SweepSchema = from_dict(SweepSchema, raw)  # 1)
    name = schema.name or "sweep"
    require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) is not None, "name", name,
            "letters, digits, '.', '_' and '-' (it names a folder)")
    _check_stages(schema, base, base_dir)  # 2)
    require(bool(schema.space), "space", schema.space, "at least one searched key, e.g. gates.penalty")
    space = [parse_dimension(k, v) for k, v in schema.space.items()]
    _check_space(Sweep(name=name, path=path, schema=schema, base=base, space=[], storage=""), space)  # 3)
    _check_search(schema, space)  # 4)
    sweep = Sweep(name=name, path=path, schema=schema, base=base, space=space,
                  storage=resolve_storage(storage or schema.storage), smoke_test=smoke_test)
    _check_methods(sweep)  # 5)
    _check_points(sweep)
    _check_scheduler(sweep)
    return sweep


def _check_scheduler(sweep: Sweep) -> None:
    """search.scheduler: MO-ASHA's rungs must fall on evaluations (steps, not epochs) before the last step."""
    c = sweep.search.scheduler
    if c.kind == "none":
        return
    t = sweep.trial_config({}).train
    require(t.eval_unit == "steps", "search.scheduler.kind", c.kind,
            "'none' while train.eval_unit is 'epochs' (the rungs count optimizer steps)")
    require(c.reduction_factor > 1, "search.scheduler.reduction_factor", c.reduction_factor, "a number > 1")
    grace = c.grace_steps if c.grace_steps is not None else t.eval_every
    require(0 < grace < t.max_steps, "search.scheduler.grace_steps", grace,
            f"steps in (0, {t.max_steps}) (train.max_steps of the gate trials)")
    from .scheduler import rungs

    off = [r for r in rungs(grace, c.reduction_factor, t.max_steps) if r % t.eval_every]
    require(not off, "search.scheduler.grace_steps", grace,
            f"rungs that fall on evaluations (every {t.eval_every} steps, train.eval_every); these would not: {off}")


def _check_stages(schema: SweepSchema, base: dict[str, Any], base_dir: Path) -> None:
    """The base model's and the trials' configs, the freezing rule, the given base checkpoint (made absolute)."""
    base_cfg = _stage_config("base + pretrain.set", _with(base, schema.pretrain.set))
    prune_cfg = _stage_config("base + prune.set", _with(base, schema.prune.set))
    f = schema.prune.freeze
    require(f == "auto" or (isinstance(f, list) and all(x in ("encoder", "decoder", "embeddings") for x in f)),
           "prune.freeze", f, "'auto' (freeze the side without gates) or a list of encoder, decoder, embeddings")
    require("train.freeze" not in schema.prune.set, "prune.set.train.freeze", schema.prune.set.get("train.freeze"),
           "nothing: set prune.freeze instead")
    p = schema.pretrain
    if p.enabled and p.checkpoint is None:
        require(base_cfg.gates.mode in ("none", "open"), "pretrain.set.gates.mode", base_cfg.gates.mode,
               "'none' or 'open' (the base model is trained without learned gates)")
    if p.checkpoint is not None:
        require(p.enabled, "pretrain.checkpoint", p.checkpoint, "null when pretrain.enabled is false")
        given = Path(os.path.expandvars(os.path.expanduser(p.checkpoint)))
        tried = [given] if given.is_absolute() else [Path.cwd() / given, base_dir / given]  # results/... or ../
        ckpt = next((c for c in tried if c.is_file()), tried[0])
        require(ckpt.is_file(), "pretrain.checkpoint", p.checkpoint,
               f"an existing checkpoint file (tried {' and '.join(str(c) for c in tried)})")
        p.checkpoint = str(ckpt.resolve())
    require(prune_cfg.gates.mode == "learned", "prune.set.gates.mode", prune_cfg.gates.mode,
           "'learned' (trials learn which heads to keep)")
    d = prune_cfg.distill
    require(not d.enabled or p.enabled or d.teacher is not None, "prune.set.distill.weight", d.weight,
           "0 when pretrain.enabled is false and distill.teacher is not set: distillation learns from the sweep's "
           "base model, and this sweep has none")
    require(not (p.enabled and p.checkpoint is None and base_cfg.distill.enabled), "pretrain.set.distill.weight",
           base_cfg.distill.weight, "0, in base and pretrain.set: the base model trains without a teacher (it is the "
           "trials' teacher); set distill in prune.set")
    if p.enabled:
        changed = sorted(k for k in set(flatten(schema.prune.set)) | set(flatten(schema.pretrain.set))
                         if is_base_key(k) and flatten(base_cfg.to_dict()).get(k) != flatten(prune_cfg.to_dict()).get(k))
        require(not changed, "prune.set", {k: flatten(schema.prune.set).get(k) for k in changed},
               "no change to model.* or the corpus/vocabulary keys (trials start from the base model's weights; "
               "set them in `base`, or search them with `choice`)")


def _check_space(draft: Sweep, space: list) -> None:
    """Each searched key is allowed, and valid at its extremes in a trial's config (and the base config)."""
    schema = draft.schema
    for dim in space:
        if dim.key in ("gates.mode", "train.freeze"):
            raise ConfigError(f"Invalid setting for `space.{dim.key}`. Allowed: any key but gates.mode "
                              "and train.freeze (trials always learn gates; prune.freeze sets the freezing).")
        if schema.pretrain.enabled and is_base_key(dim.key) and dim.kind != "choice":
            raise ConfigError(f"Invalid setting for `space.{dim.key}`: {dim.kind}. Allowed: choice (a searched "
                              f"base-model key trains one base model per value), or pretrain.enabled: false.")
        if schema.pretrain.checkpoint is not None and is_base_key(dim.key):
            raise ConfigError(f"Invalid setting for `space.{dim.key}`. Allowed: no model or corpus key when "
                              f"pretrain.checkpoint fixes the base model.")
        for value in dim.extremes():
            try:
                draft.trial_config({dim.key: value})
                if schema.pretrain.enabled and is_base_key(dim.key):
                    draft.base_config({dim.key: value})
            except ConfigError as exc:
                raise ConfigError(f"space.{dim.key} = {value!r} makes an invalid trial: {exc}") from None


def _check_search(schema: SweepSchema, space: list) -> None:
    """Objectives every trial reports, the sampler's settings, resources, checkpoints kept, W&B."""
    require(bool(schema.objectives), "objectives", [], "at least one {metric, mode}")
    names = [o.metric for o in schema.objectives]
    for i, o in enumerate(schema.objectives):
        require(o.metric in OBJECTIVE_METRICS, f"objectives[{i}].metric", o.metric,
               "a metric every trial reports: " + ", ".join(OBJECTIVE_METRICS))
    require(len(set(names)) == len(names), "objectives", names, "each metric once")
    for i, c in enumerate(schema.constraints):
        where = f"constraints[{i}]"
        require(c.metric in OBJECTIVE_METRICS, f"{where}.metric", c.metric,
                "a metric every trial reports: " + ", ".join(OBJECTIVE_METRICS))
        given = [k for k in ("min", "max", "min_relative_to_base", "max_relative_to_base") if getattr(c, k) is not None]
        require(len(given) == 1, where, given, "exactly one of min, max, min_relative_to_base, max_relative_to_base")
        if given[0].endswith("_relative_to_base"):
            require(c.metric in RELATIVE_METRICS, f"{where}.metric", c.metric,
                    f"{' or '.join(RELATIVE_METRICS)} for a bound relative to the base model")
            require(schema.pretrain.enabled, f"{where}.{given[0]}", getattr(c, given[0]),
                    "a bound without a base model (pretrain.enabled is false): min or max")
    if schema.constraints:
        require(schema.search.sampler in ("tpe", "nsga2"), "search.sampler", schema.search.sampler,
                "'tpe' or 'nsga2' with constraints (the samplers that honour Optuna's constraints)")
    lat = schema.latency
    if M.SPEEDUP in names or any(c.metric == M.SPEEDUP for c in schema.constraints):
        require(lat.enabled, "latency.enabled", lat.enabled, "true where an objective or a constraint is speedup")
    if lat.enabled:
        require(schema.pretrain.enabled, "latency.enabled", lat.enabled,
                "false without a base model (pretrain.enabled is false): the speed-up is against it")
        require(lat.sentences >= 1, "latency.sentences", lat.sentences, "an integer >= 1")
        require(bool(lat.batch_sizes) and all(isinstance(b, int) and b >= 1 for b in lat.batch_sizes),
                "latency.batch_sizes", lat.batch_sizes, "a non-empty list of integers >= 1")
        require(lat.beam_size >= 1, "latency.beam_size", lat.beam_size, "an integer >= 1")
        require(lat.rounds >= 1, "latency.rounds", lat.rounds, "an integer >= 1")
    s = schema.search
    require(s.num_samples >= 1, "search.num_samples", s.num_samples, "an integer >= 1")
    require(s.max_concurrent >= 1, "search.max_concurrent", s.max_concurrent, "an integer >= 1")
    require(s.max_failures >= 0, "search.max_failures", s.max_failures, "an integer >= 0")
    require(s.startup_trials is None or s.startup_trials >= 0, "search.startup_trials", s.startup_trials,
            "an integer >= 0 (TPE's random trials before it models the space), or null for Optuna's 10")
    require(s.population_size is None or s.population_size >= 2, "search.population_size", s.population_size,
            "an integer >= 2 (NSGA-II's trials per generation), or null for Optuna's 50")
    if s.sampler == "grid":
        size = math.prod(len(d.grid()) for d in space)
        require(s.num_samples <= size, "search.num_samples", s.num_samples,
               f"at most the grid's {size} points with sampler 'grid'")
    r = schema.resources
    for where, res in (("resources", r), ("pretrain.resources", schema.pretrain.resources),
                       ("baselines.scratch_resources", schema.baselines.scratch_resources)):
        if res is not None:
            require(res.cpus > 0, f"{where}.cpus", res.cpus, "a number > 0")
            require(res.gpus >= 0, f"{where}.gpus", res.gpus, "a number >= 0")
            require(res.gpus <= 1, f"{where}.gpus", res.gpus,
                    "a fraction of one GPU, or 1 (a trial trains on one device: data-parallel training across "
                    "several GPUs is not implemented, so more would sit idle)")
    t = schema.test
    require(t.beam_size >= 1, "test.beam_size", t.beam_size, "an integer >= 1")
    require(t.batch_size >= 1, "test.batch_size", t.batch_size, "an integer >= 1")
    require(t.max_sentences is None or t.max_sentences >= 1, "test.max_sentences", t.max_sentences,
            "an integer >= 1, or null for the whole split")
    require(t.bootstrap >= 100, "test.bootstrap", t.bootstrap, "an integer >= 100 (resamples; sacrebleu uses 1000)")
    require(0.0 < t.target_removed < 1.0, "test.target_removed", t.target_removed,
            "a share of the gated heads in (0, 1), e.g. 0.875 for 3 of 24 kept")
    require(t.tolerance >= 0.0, "test.tolerance", t.tolerance, "BLEU points >= 0")
    for i, other in enumerate(t.include):
        require(isinstance(other, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", other) is not None,
                f"test.include[{i}]", other, "the name of another sweep in the same results root (its folder name)")
    require(len(set(t.include)) == len(t.include), "test.include", t.include, "distinct sweep names")
    for i, claim in enumerate(t.claims):
        where = f"test.claims[{i}]"
        for key in ("method", "against"):
            require(getattr(claim, key) in BUDGET_METHODS, f"{where}.{key}", getattr(claim, key),
                    "a budget method: " + ", ".join(BUDGET_METHODS))
        require(claim.against != claim.method, f"{where}.against", claim.against, "another method than `method`")
        require(claim.by in ("mean", "interval"), f"{where}.by", claim.by,
                "'mean' (at least matches on the seed mean) or 'interval' (beats it: the interval above 0)")
    require(schema.keep_checkpoints >= 1, "keep_checkpoints", schema.keep_checkpoints, "an integer >= 1")
    require(schema.wandb.init_timeout > 0, "wandb.init_timeout", schema.wandb.init_timeout, "a number > 0")
    require(schema.wandb.upload_timeout > 0, "wandb.upload_timeout", schema.wandb.upload_timeout, "a number > 0")
    require(bool(schema.wandb.project), "wandb.project", schema.wandb.project, "a non-empty project name")


def _check_points(sweep: Sweep) -> None:
    """``search.points_to_evaluate``: keys of the space, values inside it."""
    space, s = sweep.space, sweep.search
    keys = {d.key for d in space}
    for i, point in enumerate(s.points_to_evaluate):
        unknown = sorted(set(point) - keys)
        require(not unknown, f"search.points_to_evaluate[{i}]", point,
               f"keys of the search space only ({', '.join(sorted(keys))})")
    for i, point in enumerate(sweep.points_to_evaluate()):
        for dim in space:
            require(dim.contains(point[dim.key]), f"search.points_to_evaluate[{i}].{dim.key}", point[dim.key],
                   dim.describe() + (" (named in the point or taken from the prune config)"))


def _check_methods(sweep: Sweep) -> None:
    m, b = sweep.schema.method, sweep.schema.baselines
    chosen = [m] if isinstance(m, str) else m
    require(isinstance(chosen, list) and bool(chosen) and all(isinstance(x, str) and x in METHODS for x in chosen)
           and len(set(chosen)) == len(chosen), "method", m,
           f"one of {', '.join(METHODS)}, or a list of them without repeats")
    methods = sweep.methods
    require(SCRATCH not in methods or GATES in methods, "method", m,
           "a list with gates when it has scratch (scratch trains the layouts the gate trials found)")
    baselines = [x for x in methods if x != GATES]
    if not baselines:
        return
    require(sweep.pretraining, "method", m, "gates alone when pretrain.enabled is false (the baselines prune or "
           "retrain a base model)")
    require(not any(is_base_key(d.key) for d in sweep.space), "method", m,
           "gates alone when the space searches model or corpus keys (the baselines compare against one base model)")
    total = sweep.gated_heads()
    require(all(isinstance(n, int) and 0 <= n <= total for n in b.budgets) and len(set(b.budgets)) == len(b.budgets),
           "baselines.budgets", b.budgets, f"distinct integers in [0, {total}] (the heads of prune.set's "
           f"gates.attention), or [] for 1/8, 1/4, 3/8, 1/2, 3/4 and all of them")
    require(b.seeds >= 1, "baselines.seeds", b.seeds, "an integer >= 1")
    require(bool(b.finetune_steps) and all(n >= 0 for n in b.finetune_steps)
           and len(set(b.finetune_steps)) == len(b.finetune_steps), "baselines.finetune_steps", b.finetune_steps,
           "a non-empty list of distinct integers >= 0 (0: prune and evaluate)")
    require(0.0 < b.iterative_fraction <= 1.0, "baselines.iterative_fraction", b.iterative_fraction,
            "a number in (0, 1]: the share of the gated heads removed per round")
    require(b.scratch_seeds >= 1, "baselines.scratch_seeds", b.scratch_seeds, "an integer >= 1")
    if GATES_BUDGET in methods:
        require(max(b.finetune_steps) > 0, "baselines.finetune_steps", b.finetune_steps,
                "a list with a number of steps > 0: gates_budget fine-tunes as long as the longest of them")
    require(b.scratch_limit is None or b.scratch_limit >= 1, "baselines.scratch_limit", b.scratch_limit,
           "an integer >= 1, or null for every layout")
    require(b.importance_batches >= 1, "baselines.importance_batches", b.importance_batches, "an integer >= 1")
    for where, keys in (("baselines.set", b.set), ("baselines.scratch_set", b.scratch_set)):
        bad = sorted(k for k in keys if k.startswith(("model.", "gates.")) or is_base_key(k) or k == "train.freeze")
        require(not bad, where, {k: keys[k] for k in bad}, "no model.*, gates.*, corpus/vocabulary keys or "
               "train.freeze (the baselines keep the base model's architecture and the prune stage's freezing)")
    try:
        for n in b.finetune_steps:
            sweep.baseline_config(n, {})
        sweep.scratch_config({})
        if GATES_BUDGET in methods:
            for budget in sweep.budgets():
                sweep.gates_budget_config({BUDGET: budget})
    except ConfigError as exc:
        raise ConfigError(f"method {m}: {exc}") from None


def check_gpus(requested: float, available: float, autoscale: bool, where: str = "resources.gpus") -> None:
    """Refuse GPU trials on a cluster without GPUs: Ray would leave them PENDING forever."""
    if requested > 0 and available < requested and not autoscale:
        raise ConfigError(
            f"Invalid setting for `{where}`: {requested!r}. Allowed: 0 on this Ray cluster, which has "
            f"{available:g} GPUs (set resources.autoscale: true if the cluster adds GPU nodes on demand)."
        )
