"""Sweep configs (``sweeps/*.yaml``): one schema, loaded and validated before Ray starts. No Ray here.

A sweep names a base run config, the overrides of its two stages (``pretrain``: the plain base model, trained once
per distinct base config; ``prune``: each Optuna trial fine-tunes it with learned gates and the L0 penalty), the
search space over any config key, the objectives, the sampler, resources per trial, the storage folder and W&B.
:func:`load_sweep` turns the YAML into a :class:`Sweep`; every problem is a :class:`~model.config.ConfigError`
naming the key, the value and what is allowed. ``trainable.py`` turns a :class:`Sweep` into Ray Tune objects.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import metrics as M
from .config import ATTENTION_TYPES, Config, ConfigError, config_from_dict, flatten, from_dict, read_yaml, set_key

SPACE_KINDS = ("loguniform", "uniform", "choice", "randint")
METHODS = ("gates", "importance", "random", "scratch")  # model/baselines.py describes the last three
DEFAULT_STORAGE = "results"
# Metrics every trial reports at every evaluation, and the direction that makes sense for each.
OBJECTIVE_METRICS: dict[str, str] = {
    M.BLEU: "max", M.CHRF: "max", M.OPEN_HEADS: "min", M.L0: "min", M.VALID_NLL: "min", M.LOSS: "min",
    M.NLL: "min", **{M.open_heads_key(t): "min" for t in ATTENTION_TYPES},
}
# Data keys that decide the vocabulary and the corpus: a base model is defined by them and by model.*.
BASE_DATA_KEYS = ("data.corpus", "data.hf_name", "data.src_lang", "data.tgt_lang", "data.synthetic", "data.files",
                  "data.joint_vocab", "data.vocab_size", "data.spm_model_type", "data.character_coverage")
# Keys that say where or how fast a run goes, not what it learns: left out of the base model's hash.
RUN_LOCATION_KEYS = ("data.cache_dir", "data.data_dir", "data.mirror", "train.threads", "train.device",
                     "train.progress")


# --------------------------------------------------------------------------------------------------
# The schema: what a sweep YAML may contain (defaults live here and nowhere else)


@dataclass
class ResourcesConfig:
    cpus: float = 1.0  # CPU cores per trial; torch uses max(1, int(cpus)) threads
    gpus: float = 0.0  # GPUs per trial; fractions share a GPU between trials
    autoscale: bool = False  # true: GPU nodes are added on demand (cluster launcher), so none need exist yet


@dataclass
class PretrainConfig:
    enabled: bool = True  # false: each trial trains a gated model from scratch (no base model)
    checkpoint: str | None = None  # use this converged checkpoint as the base instead of training one
    set: dict[str, Any] = field(default_factory=dict)  # overrides of the base config for the base model
    resources: ResourcesConfig | None = None  # default: the sweep's resources


@dataclass
class PruneConfig:
    set: dict[str, Any] = field(default_factory=dict)  # overrides of the base config for every trial
    # train.freeze of every trial: "auto" freezes the side (encoder/decoder) whose attention carries no gates,
    # so pruning encoder heads never retrains the decoder; or an explicit list (e.g. [] or [decoder, embeddings])
    freeze: Any = "auto"


def auto_freeze(gated: list[str]) -> list[str]:
    """The parts a prune trial keeps fixed under ``prune.freeze: auto``: each side without gated attention."""
    parts = [] if "enc_self" in gated else ["encoder"]
    return parts + ([] if {"dec_self", "dec_cross"} & set(gated) else ["decoder"])


@dataclass
class BaselinesConfig:
    """Settings of the methods other than ``gates`` (see :mod:`model.baselines`)."""

    # heads kept among prune.set's gates.attention types (importance, random); [] = 1/8, 1/4, 3/8, 1/2, 3/4 and
    # all of them
    budgets: list[int] = field(default_factory=list)
    seeds: int = 3  # random: layouts per budget
    finetune_steps: list[int] = field(default_factory=lambda: [0])  # 0: prune and evaluate; N: fine-tune N steps
    importance_batches: int = 16  # importance: training batches the head importance is summed over
    set: dict[str, Any] = field(default_factory=dict)  # overrides of the prune config for fine-tuning pruned models
    scratch_layouts: Literal["pareto", "all"] = "pareto"  # which gate trials' layouts `scratch` trains
    scratch_limit: int | None = None  # at most this many of them (spread over the head counts); null: all
    scratch_set: dict[str, Any] = field(default_factory=dict)  # overrides of the base recipe for `scratch` models


@dataclass(frozen=True)
class MethodRun:
    """One experiment folder of a sweep: a method (with its fine-tuning steps, for importance/random)."""

    method: str
    finetune_steps: int
    name: str  # folder name under the results root

    @property
    def label(self) -> str:
        return self.method + (f" + {self.finetune_steps} steps" if self.finetune_steps else "")


@dataclass
class ObjectiveConfig:
    metric: str = M.BLEU
    mode: Literal["max", "min"] = "max"


@dataclass
class SearchConfig:
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0  # seed of the sampler
    num_samples: int = 8  # trials in all (grid: at most the size of the grid)
    max_concurrent: int = 2  # trials running at once
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)  # first trials, completed from prune
    max_failures: int = 2  # a crashed trial is retried from its last checkpoint this many times
    trial_seeds: Literal["per_trial", "fixed"] = "per_trial"  # per_trial: train.seed + a hash of the trial's params


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with a key, else offline
    project: str = "headsweep"
    entity: str | None = None
    group: str | None = None  # default: the sweep's name
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0  # seconds to wait for the W&B service before falling back to offline
    upload_timeout: float = 60.0  # seconds a finished trial waits for its upload; the rest stays on disk for `wandb sync`


def _default_objectives() -> list[ObjectiveConfig]:
    return [ObjectiveConfig(M.BLEU, "max"), ObjectiveConfig(M.OPEN_HEADS, "min")]


@dataclass
class SweepSchema:
    name: str | None = None  # folder name under storage; default: the file's stem
    # gates | importance | random | scratch, or a list of them (run in that order; scratch needs gates)
    method: Any = "gates"
    base: Any = None  # a run config: a path (relative to the sweep file) or an inline mapping
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    space: dict[str, Any] = field(default_factory=dict)  # dotted config key -> {loguniform|uniform|choice|randint}
    objectives: list[ObjectiveConfig] = field(default_factory=_default_objectives)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: str = DEFAULT_STORAGE  # results root (relative to the working directory) or a URI (s3://...)
    keep_checkpoints: int = 2  # checkpoints Ray keeps per trial (the newest)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# --------------------------------------------------------------------------------------------------
# Search space


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` in SPACE_KINDS; ``args`` = [low, high] (randint: inclusive) or the choices."""

    key: str
    kind: str
    args: tuple

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "randint" and (not isinstance(value, int)):
            return False
        return self.args[0] <= value <= self.args[1]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(v) for v in self.args)
        return f"a {self.kind} value in [{self.args[0]}, {self.args[1]}]"

    def extremes(self) -> list[Any]:
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "randint":
            return list(range(self.args[0], self.args[1] + 1))
        raise ConfigError(f"Invalid setting for `space.{self.key}`: {self.kind}. Allowed with search.sampler "
                          f"'grid': choice or randint (a grid needs finitely many values).")


def parse_dimension(key: str, spec: Any) -> Dimension:
    where = f"space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise ConfigError(f"Invalid setting for `{where}`: {spec!r}. Allowed: a mapping with one of "
                          f"{', '.join(SPACE_KINDS)}, e.g. {{loguniform: [1.0e-4, 1.0e-2]}} or {{choice: [1, 2]}}.")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"Invalid setting for `{where}.choice`: {args!r}. Allowed: a non-empty list of values.")
        if any(a is not None and not isinstance(a, (str, int, float, bool)) for a in args):
            raise ConfigError(f"Invalid setting for `{where}.choice`: {args!r}. Allowed: scalar values (string, "
                              f"number, true/false, null), as Optuna's categorical distributions hold.")
        if len({json.dumps(a, sort_keys=True) for a in args}) != len(args):
            raise ConfigError(f"Invalid setting for `{where}.choice`: {args!r}. Allowed: values without repeats.")
        return Dimension(key, kind, tuple(args))
    number = (int,) if kind == "randint" else (int, float)
    if (not isinstance(args, list) or len(args) != 2
            or any(isinstance(a, bool) or not isinstance(a, number) or not math.isfinite(a) for a in args)):
        what = "two integers [low, high], both included" if kind == "randint" else "two finite numbers [low, high]"
        raise ConfigError(f"Invalid setting for `{where}.{kind}`: {args!r}. Allowed: {what}.")
    low, high = args
    if kind == "loguniform" and not 0 < low < high:
        raise ConfigError(f"Invalid setting for `{where}.loguniform`: {args!r}. Allowed: 0 < low < high "
                          f"(a log scale cannot reach 0; the base model is the unpenalised reference).")
    if kind != "loguniform" and not (low < high or (kind == "randint" and low == high)):
        raise ConfigError(f"Invalid setting for `{where}.{kind}`: {args!r}. Allowed: low < high.")
    return Dimension(key, kind, (float(low), float(high)) if kind != "randint" else (low, high))


def is_base_key(key: str) -> bool:
    """True for keys that define the base model (model.* and the corpus/vocabulary keys)."""
    return key.startswith("model.") or any(key == k or key.startswith(k + ".") for k in BASE_DATA_KEYS)


# --------------------------------------------------------------------------------------------------
# The resolved sweep


def _with(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for key, value in values.items():
        set_key(out, key, copy.deepcopy(value))
    return out


def base_hash(cfg: Config) -> str:
    """Short stable hash of everything that decides what a base model learns (not where or how fast it runs)."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in RUN_LOCATION_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def trial_seed(base_seed: int, params: dict[str, Any]) -> int:
    """A seed that differs between trials, is stable for a trial across restarts, and is reproducible."""
    return base_seed + zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()) % 1_000_003


@dataclass
class Sweep:
    name: str
    path: Path | None  # the YAML it came from
    schema: SweepSchema
    base: dict[str, Any]  # the base run config as a mapping (before stage overrides)
    space: list[Dimension]
    storage: str  # absolute path or URI of the results root
    smoke_test: bool = False

    # -- derived views ------------------------------------------------------------------------------

    @property
    def search(self) -> SearchConfig:
        return self.schema.search

    @property
    def objectives(self) -> list[ObjectiveConfig]:
        return self.schema.objectives

    @property
    def resources(self) -> ResourcesConfig:
        return self.schema.resources

    @property
    def pretrain_resources(self) -> ResourcesConfig:
        return self.schema.pretrain.resources or self.schema.resources

    @property
    def pretraining(self) -> bool:
        """True when trials start from a base model (trained here or given as a checkpoint)."""
        return self.schema.pretrain.enabled

    @property
    def experiment_dir(self) -> str:
        return join_storage(self.storage, self.name)

    @property
    def wandb_group(self) -> str:
        return self.schema.wandb.group or self.name

    def base_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if is_base_key(k)}

    def base_config(self, params: dict[str, Any] | None = None) -> Config:
        """The base model's run config for a trial's params (only their base keys count)."""
        data = _with(self.base, self.schema.pretrain.set)
        return config_from_dict(_with(data, self.base_params(params or {})))

    def prune_data(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Base + prune overrides + ``params`` + the freezing rule, as a mapping (not yet validated)."""
        data = _with(_with(self.base, self.schema.prune.set), params or {})
        freeze = self.schema.prune.freeze
        if freeze == "auto":
            freeze = auto_freeze(config_from_dict(copy.deepcopy(data)).gates.attention)
        set_key(data, "train.freeze", list(freeze))
        return data

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The run config of one prune trial: base + prune overrides + the sampled params (+ its seed)."""
        data = self.prune_data(params)
        if self.search.trial_seeds == "per_trial" and "train.seed" not in params:
            seed = config_from_dict(copy.deepcopy(data)).train.seed
            set_key(data, "train.seed", trial_seed(seed, params))
        return self._placed(data, self.resources)

    def base_variants(self) -> list[dict[str, Any]]:
        """One params dict per distinct base model: the product of the searched base keys' choices."""
        dims = [d for d in self.space if is_base_key(d.key)] if self.pretraining else []
        return [dict(zip([d.key for d in dims], combo)) for combo in itertools.product(*[d.args for d in dims])]

    # -- methods --------------------------------------------------------------------------------------

    @property
    def methods(self) -> list[str]:
        m = self.schema.method
        chosen = [m] if isinstance(m, str) else list(m)
        return [x for x in METHODS if x in chosen]

    def method_runs(self) -> list[MethodRun]:
        """The experiment folders of this sweep, in the order they run: gates keeps the sweep's own name."""
        runs = []
        for method in self.methods:
            steps = self.schema.baselines.finetune_steps if method in ("importance", "random") else [0]
            for n in steps:
                suffix = "" if method == "gates" else f"-{method}" + (f"-ft{n}" if n else "")
                runs.append(MethodRun(method, n, self.name + suffix))
        return runs

    def gated_heads(self) -> int:
        """Heads of the gated attention types (prune.set's gates.attention) in the base model."""
        cfg = config_from_dict(self.prune_data())
        return sum(cfg.model.n_heads * cfg.model.layers(k) for k in cfg.gates.attention)

    def budgets(self) -> list[int]:
        """Head budgets of the importance and random methods."""
        total = self.gated_heads()
        if self.schema.baselines.budgets:
            return sorted(set(self.schema.baselines.budgets))
        if self.smoke_test:
            return [max(1, total // 4)]
        return sorted({max(1, round(total * f)) for f in (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1)})

    def sample_seed(self) -> int:
        """The seed of the training batches head importance is measured on: the prune config's own train.seed,
        the same for every trial (per-trial seeds only vary fine-tuning)."""
        return config_from_dict(self.prune_data()).train.seed

    def baseline_config(self, finetune_steps: int, params: dict[str, Any]) -> Config:
        """The config of an importance/random trial, before pruning sets ``model.heads``: the prune recipe with
        gates off, ``finetune_steps`` steps and ``baselines.set``."""
        data = self.prune_data()
        for key, value in {"gates.mode": "none", "gates.penalty": 0.0, "gates.target_open": None,
                           "train.max_steps": finetune_steps, **self.schema.baselines.set}.items():
            set_key(data, key, copy.deepcopy(value))
        if self.search.trial_seeds == "per_trial":
            set_key(data, "train.seed", trial_seed(config_from_dict(copy.deepcopy(data)).train.seed, params))
        return self._placed(data, self.resources)

    def scratch_config(self, heads: dict[str, list[int]]) -> Config:
        """A ``scratch`` trial: the base recipe (``pretrain.set``), the prune stage's evaluation settings,
        ``baselines.scratch_set`` and the layout ``heads``, from random initialisation."""
        data = _with(self.base, self.schema.pretrain.set)
        evaluation = {k: v for k, v in flatten(self.schema.prune.set).items() if k.startswith("eval.")}
        data = _with(data, {**evaluation, **self.schema.baselines.scratch_set})
        set_key(data, "model.heads", copy.deepcopy(heads))
        set_key(data, "gates.mode", "none")
        return self._placed(data, self.pretrain_resources)

    @staticmethod
    def _placed(data: dict[str, Any], r: ResourcesConfig) -> Config:
        set_key(data, "train.threads", max(1, int(r.cpus)))
        set_key(data, "train.device", "cuda" if r.gpus > 0 else "cpu")
        set_key(data, "train.progress", False)
        return config_from_dict(data)

    def points_to_evaluate(self) -> list[dict[str, Any]]:
        """The configured first points, completed with the prune config's own values for unnamed keys."""
        prune = flatten(_with(self.base, self.schema.prune.set))
        defaults = flatten(Config().to_dict())
        return [{d.key: point.get(d.key, prune.get(d.key, defaults.get(d.key))) for d in self.space}
                for point in self.search.points_to_evaluate]


def join_storage(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else str(Path(root, *parts))


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
        "train.warmup_steps": 2, "train.max_epochs": None, "train.max_minutes": None, "train.precision": "fp32",
        "train.compile": False, "eval.max_sentences": 16, "eval.beam_size": 1, "eval.samples": 1,
    }
    if flatten(base).get("data.corpus", "synthetic") == "synthetic":
        tiny["data.vocab_size"] = 200
    base = _with(base, tiny)
    for stage in ("pretrain", "prune"):
        section = raw.setdefault(stage, {}) or {}
        raw[stage] = section
        if isinstance(section, dict) and isinstance(section.get("set"), dict):
            section["set"] = {k: v for k, v in flatten(section["set"]).items() if k not in tiny and
                              not k.startswith(("model.", "data.synthetic."))}
        if isinstance(section, dict) and stage == "pretrain":
            section.pop("resources", None)
            section.pop("checkpoint", None)
    baselines = raw.get("baselines")
    if isinstance(baselines, dict):
        baselines.pop("budgets", None)  # the smoke test's own budget (Sweep.budgets)
        baselines["scratch_limit"] = 1
        if isinstance(baselines.get("seeds"), int):
            baselines["seeds"] = 1
        steps = baselines.get("finetune_steps")
        if isinstance(steps, list) and all(isinstance(n, int) for n in steps):
            baselines["finetune_steps"] = sorted({min(n, 2 * SMOKE_EVAL_EVERY) for n in steps})
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
    raw["name"] = f"{raw.get('name') or 'sweep'}-smoke"
    raw["keep_checkpoints"] = 1
    return raw, base


# --------------------------------------------------------------------------------------------------
# Loading and validation


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {allowed}.")


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
) -> Sweep:
    """Read, (optionally) shrink and validate a sweep YAML; raise :class:`ConfigError` on any problem."""
    from .config import apply_overrides

    path = Path(path)
    try:
        raw = apply_overrides(read_yaml(path), list(overrides or []))
        raw.setdefault("name", path.stem)
        return sweep_from_dict(raw, base_dir=path.parent, path=path, smoke_test=smoke_test, storage=storage)
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


def sweep_from_dict(
    raw: dict[str, Any],
    base_dir: Path = Path("."),
    path: Path | None = None,
    smoke_test: bool = False,
    storage: str | None = None,
) -> Sweep:
    raw = copy.deepcopy(raw)
    base = _read_base(raw.get("base"), base_dir)
    if smoke_test:
        raw, base = smoke_shrink(raw, base)
    for stage, key in (("pretrain", "set"), ("prune", "set"), ("baselines", "set"), ("baselines", "scratch_set")):
        section = raw.get(stage)  # `set` may be written nested or with dotted keys
        if isinstance(section, dict) and isinstance(section.get(key), dict):
            section[key] = flatten(section[key])
    schema: SweepSchema = from_dict(SweepSchema, raw)
    name = schema.name or "sweep"
    _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) is not None, "name", name,
           "letters, digits, '.', '_' and '-' (it names a folder)")

    # 1) the two stages' configs
    base_cfg = _stage_config("base + pretrain.set", _with(base, schema.pretrain.set))
    prune_cfg = _stage_config("base + prune.set", _with(base, schema.prune.set))
    f = schema.prune.freeze
    _check(f == "auto" or (isinstance(f, list) and all(x in ("encoder", "decoder", "embeddings") for x in f)),
           "prune.freeze", f, "'auto' (freeze the side without gates) or a list of encoder, decoder, embeddings")
    _check("train.freeze" not in schema.prune.set, "prune.set.train.freeze", schema.prune.set.get("train.freeze"),
           "nothing: set prune.freeze instead")
    p = schema.pretrain
    if p.enabled and p.checkpoint is None:
        _check(base_cfg.gates.mode in ("none", "open"), "pretrain.set.gates.mode", base_cfg.gates.mode,
               "'none' or 'open' (the base model is trained without learned gates)")
    if p.checkpoint is not None:
        _check(p.enabled, "pretrain.checkpoint", p.checkpoint, "null when pretrain.enabled is false")
        given = Path(os.path.expandvars(os.path.expanduser(p.checkpoint)))
        tried = [given] if given.is_absolute() else [Path.cwd() / given, base_dir / given]  # results/... or ../
        ckpt = next((c for c in tried if c.is_file()), tried[0])
        _check(ckpt.is_file(), "pretrain.checkpoint", p.checkpoint,
               f"an existing checkpoint file (tried {' and '.join(str(c) for c in tried)})")
        p.checkpoint = str(ckpt.resolve())
    _check(prune_cfg.gates.mode == "learned", "prune.set.gates.mode", prune_cfg.gates.mode,
           "'learned' (trials learn which heads to keep)")
    if p.enabled:
        changed = sorted(k for k in set(flatten(schema.prune.set)) | set(flatten(schema.pretrain.set))
                         if is_base_key(k) and flatten(base_cfg.to_dict()).get(k) != flatten(prune_cfg.to_dict()).get(k))
        _check(not changed, "prune.set", {k: flatten(schema.prune.set).get(k) for k in changed},
               "no change to model.* or the corpus/vocabulary keys (trials start from the base model's weights; "
               "set them in `base`, or search them with `choice`)")

    # 2) the search space: each key valid at its extremes in the prune config (and the base config)
    _check(bool(schema.space), "space", schema.space, "at least one searched key, e.g. gates.penalty")
    space = [parse_dimension(k, v) for k, v in schema.space.items()]
    draft = Sweep(name=name, path=path, schema=schema, base=base, space=[], storage="")
    prune_data = draft.prune_data()
    for dim in space:
        if dim.key in ("gates.mode", "train.freeze"):
            raise ConfigError(f"Invalid setting for `space.{dim.key}`. Allowed: any key but gates.mode "
                              "and train.freeze (trials always learn gates; prune.freeze sets the freezing).")
        if p.enabled and is_base_key(dim.key) and dim.kind != "choice":
            raise ConfigError(f"Invalid setting for `space.{dim.key}`: {dim.kind}. Allowed: choice (a searched "
                              f"base-model key trains one base model per value), or pretrain.enabled: false.")
        if p.checkpoint is not None and is_base_key(dim.key):
            raise ConfigError(f"Invalid setting for `space.{dim.key}`. Allowed: no model or corpus key when "
                              f"pretrain.checkpoint fixes the base model.")
        for value in dim.extremes():
            try:
                config_from_dict(_with(prune_data, {dim.key: value}))
                if p.enabled and is_base_key(dim.key):
                    config_from_dict(_with(_with(base, schema.pretrain.set), {dim.key: value}))
            except ConfigError as exc:
                raise ConfigError(f"space.{dim.key} = {value!r} makes an invalid trial: {exc}") from None

    # 3) objectives, search, resources
    _check(bool(schema.objectives), "objectives", [], "at least one {metric, mode}")
    names = [o.metric for o in schema.objectives]
    for i, o in enumerate(schema.objectives):
        _check(o.metric in OBJECTIVE_METRICS, f"objectives[{i}].metric", o.metric,
               "a metric every trial reports: " + ", ".join(OBJECTIVE_METRICS))
    _check(len(set(names)) == len(names), "objectives", names, "each metric once")
    s = schema.search
    _check(s.num_samples >= 1, "search.num_samples", s.num_samples, "an integer >= 1")
    _check(s.max_concurrent >= 1, "search.max_concurrent", s.max_concurrent, "an integer >= 1")
    _check(s.max_failures >= 0, "search.max_failures", s.max_failures, "an integer >= 0")
    if s.sampler == "grid":
        size = math.prod(len(d.grid()) for d in space)
        _check(s.num_samples <= size, "search.num_samples", s.num_samples,
               f"at most the grid's {size} points with sampler 'grid'")
    r = schema.resources
    for where, res in (("resources", r), ("pretrain.resources", p.resources)):
        if res is not None:
            _check(res.cpus > 0, f"{where}.cpus", res.cpus, "a number > 0")
            _check(res.gpus >= 0, f"{where}.gpus", res.gpus, "a number >= 0")
            _check(res.gpus <= 1 or float(res.gpus).is_integer(), f"{where}.gpus", res.gpus,
                   "a fraction of one GPU or a whole number")
    _check(schema.keep_checkpoints >= 1, "keep_checkpoints", schema.keep_checkpoints, "an integer >= 1")
    _check(schema.wandb.init_timeout > 0, "wandb.init_timeout", schema.wandb.init_timeout, "a number > 0")
    _check(schema.wandb.upload_timeout > 0, "wandb.upload_timeout", schema.wandb.upload_timeout, "a number > 0")
    _check(bool(schema.wandb.project), "wandb.project", schema.wandb.project, "a non-empty project name")

    sweep = Sweep(name=name, path=path, schema=schema, base=base, space=space,
                  storage=resolve_storage(storage or schema.storage), smoke_test=smoke_test)
    _check_methods(sweep)
    keys = {d.key for d in space}
    for i, point in enumerate(s.points_to_evaluate):
        unknown = sorted(set(point) - keys)
        _check(not unknown, f"search.points_to_evaluate[{i}]", point,
               f"keys of the search space only ({', '.join(sorted(keys))})")
    for i, point in enumerate(sweep.points_to_evaluate()):
        for dim in space:
            _check(dim.contains(point[dim.key]), f"search.points_to_evaluate[{i}].{dim.key}", point[dim.key],
                   dim.describe() + (" (named in the point or taken from the prune config)"))
    return sweep


def _check_methods(sweep: Sweep) -> None:
    m, b = sweep.schema.method, sweep.schema.baselines
    chosen = [m] if isinstance(m, str) else m
    _check(isinstance(chosen, list) and bool(chosen) and all(isinstance(x, str) and x in METHODS for x in chosen)
           and len(set(chosen)) == len(chosen), "method", m,
           f"one of {', '.join(METHODS)}, or a list of them without repeats")
    methods = sweep.methods
    _check("scratch" not in methods or "gates" in methods, "method", m,
           "a list with gates when it has scratch (scratch trains the layouts the gate trials found)")
    baselines = [x for x in methods if x != "gates"]
    if not baselines:
        return
    _check(sweep.pretraining, "method", m, "gates alone when pretrain.enabled is false (the baselines prune or "
           "retrain a base model)")
    _check(not any(is_base_key(d.key) for d in sweep.space), "method", m,
           "gates alone when the space searches model or corpus keys (the baselines compare against one base model)")
    total = sweep.gated_heads()
    _check(all(isinstance(n, int) and 0 <= n <= total for n in b.budgets) and len(set(b.budgets)) == len(b.budgets),
           "baselines.budgets", b.budgets, f"distinct integers in [0, {total}] (the heads of prune.set's "
           f"gates.attention), or [] for 1/8, 1/4, 3/8, 1/2, 3/4 and all of them")
    _check(b.seeds >= 1, "baselines.seeds", b.seeds, "an integer >= 1")
    _check(bool(b.finetune_steps) and all(n >= 0 for n in b.finetune_steps)
           and len(set(b.finetune_steps)) == len(b.finetune_steps), "baselines.finetune_steps", b.finetune_steps,
           "a non-empty list of distinct integers >= 0 (0: prune and evaluate)")
    _check(b.scratch_limit is None or b.scratch_limit >= 1, "baselines.scratch_limit", b.scratch_limit,
           "an integer >= 1, or null for every layout")
    _check(b.importance_batches >= 1, "baselines.importance_batches", b.importance_batches, "an integer >= 1")
    for where, keys in (("baselines.set", b.set), ("baselines.scratch_set", b.scratch_set)):
        bad = sorted(k for k in keys if k.startswith(("model.", "gates.")) or is_base_key(k) or k == "train.freeze")
        _check(not bad, where, {k: keys[k] for k in bad}, "no model.*, gates.*, corpus/vocabulary keys or "
               "train.freeze (the baselines keep the base model's architecture and the prune stage's freezing)")
    try:
        for n in b.finetune_steps:
            sweep.baseline_config(n, {})
        sweep.scratch_config({})
    except ConfigError as exc:
        raise ConfigError(f"method {m}: {exc}") from None


def resolve_storage(storage: str) -> str:
    """Ray needs an absolute storage path; URIs (s3://, gs://, ...) pass unchanged."""
    if "://" in storage:
        return storage
    return str(Path(os.path.expandvars(os.path.expanduser(storage))).resolve())


def check_gpus(requested: float, available: float, autoscale: bool, where: str = "resources.gpus") -> None:
    """Refuse GPU trials on a cluster without GPUs: Ray would leave them PENDING forever."""
    if requested > 0 and available < requested and not autoscale:
        raise ConfigError(
            f"Invalid setting for `{where}`: {requested!r}. Allowed: 0 on this Ray cluster, which has "
            f"{available:g} GPUs (set resources.autoscale: true if the cluster adds GPU nodes on demand)."
        )


def schema_dict(sweep: Sweep) -> dict[str, Any]:
    """The resolved sweep as plain data (recorded in the sweep folder and in W&B)."""
    return {**dataclasses.asdict(sweep.schema), "name": sweep.name, "base": sweep.base, "storage": sweep.storage}
