"""The sweep YAML's schema (``sweeps/*.yaml``): its sections as dataclasses, with every default, and the search
space's dimensions. No Ray here.

A sweep names a base run config, the overrides of its two stages (``pretrain``: the plain base model, trained once
per distinct base config; ``prune``: each Optuna trial fine-tunes it with learned gates and the L0 penalty), the
search space over any config key, the objectives, the sampler, resources per trial, the storage folder and W&B.
:func:`sweeps.validate.load_sweep` reads and checks a file against this schema; every problem is a
:class:`~model.config.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from model import metrics as M
from model.config import ATTENTION_TYPES, ConfigError

SPACE_KINDS = ("loguniform", "uniform", "choice", "randint")
# in the order they run; sweeps/baselines.py describes all but gates
GATES, GATES_BUDGET, IMPORTANCE, ITERATIVE, RANDOM, SCRATCH = (
    "gates", "gates_budget", "importance", "iterative", "random", "scratch")  # method names (`method:` in a sweep)
METHODS = (GATES, GATES_BUDGET, IMPORTANCE, ITERATIVE, RANDOM, SCRATCH)
LAYOUT_METHODS = (IMPORTANCE, ITERATIVE, RANDOM)  # prune the base model to a budget, then evaluate or fine-tune
BUDGET_METHODS = (GATES_BUDGET, *LAYOUT_METHODS)  # one trial per (budget, seed)
DEFAULT_STORAGE = "results"
# Metrics every trial reports at every evaluation, and the direction that makes sense for each.
OBJECTIVE_METRICS: dict[str, str] = {
    M.BLEU: "max", M.CHRF: "max", M.OPEN_HEADS: "min", M.L0: "min", M.VALID_NLL: "min", M.LOSS: "min",
    M.NLL: "min", **{M.open_heads_key(t): "min" for t in ATTENTION_TYPES},
    M.SPEEDUP: "max",  # only with latency.enabled: reported with the last evaluation
}
# Data keys that decide the vocabulary and the corpus: a base model is defined by them and by model.*.
BASE_DATA_KEYS = ("data.corpus", "data.hf_name", "data.src_lang", "data.tgt_lang", "data.synthetic", "data.files",
                  "data.joint_vocab", "data.vocab_size", "data.spm_model_type", "data.character_coverage")
# Keys that say where or how fast a run goes, not what it learns: left out of the base model's hash.
RUN_LOCATION_KEYS = ("data.cache_dir", "data.data_dir", "data.mirror", "train.threads", "train.device",
                     "train.progress", "train.log_every")


# --------------------------------------------------------------------------------------------------
# The schema: what a sweep YAML may contain (defaults live here and nowhere else)


@dataclass
class ResourcesConfig:
    cpus: float = 1.0  # CPU cores per trial; torch uses max(1, int(cpus)) threads
    gpus: float = 0.0  # GPUs per trial: a fraction (trials share a GPU) or 1; a trial trains on one device
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
    """Settings of the methods other than ``gates`` (see :mod:`sweeps.baselines`)."""

    # heads kept among prune.set's gates.attention types (gates_budget, importance, iterative, random); [] = 1/8,
    # 1/4, 3/8, 1/2, 3/4 and all of them
    budgets: list[int] = field(default_factory=list)
    # trials per (method, budget): seed k is the fine-tuning seed, random's layout and the training batches importance
    # is measured on, so the spread over seeds is the method's own
    seeds: int = 3
    finetune_steps: list[int] = field(default_factory=lambda: [0])  # 0: prune and evaluate; N: fine-tune N steps
    importance_batches: int = 16  # importance, iterative: training batches the head importance is summed over
    iterative_fraction: float = 0.1  # iterative: share of all gated heads removed per round (Michel et al.: 10%)
    set: dict[str, Any] = field(default_factory=dict)  # overrides of the prune config for fine-tuning pruned models
    scratch_layouts: Literal["pareto", "all"] = "pareto"  # which gate trials' layouts `scratch` trains
    scratch_limit: int | None = None  # at most this many of them (spread over the head counts); null: all
    scratch_set: dict[str, Any] = field(default_factory=dict)  # overrides of the base recipe for `scratch` models
    scratch_seeds: int = 1  # scratch: trainings per layout (initialisation and data order)
    # scratch: the full model too (the base recipe again with other seeds: how far training from scratch alone
    # moves BLEU); false where the base model already answers that and its trainings would cost the most
    scratch_full: bool = True
    # where each scratch model trains; null: pretrain.resources. Scratch trains several models as long as the base
    # one, so several at once on fewer cores each may finish them sooner than one at a time on all of them
    scratch_resources: ResourcesConfig | None = None


@dataclass(frozen=True)
class MethodRun:
    """One experiment folder of a sweep: a method (with its fine-tuning steps, for importance/random)."""

    method: str
    finetune_steps: int
    name: str  # folder name under the results root

    @property
    def label(self) -> str:
        if self.method == GATES_BUDGET:
            return f"gates at budget ({self.finetune_steps} steps)"
        return self.method + (f" + {self.finetune_steps} steps" if self.finetune_steps else "")


def method_runs(name: str, methods: list[str], finetune_steps: list[int]) -> list[MethodRun]:
    """The experiment folders of a sweep called ``name``, in the order they run: gates keeps the sweep's own name;
    the others are ``<name>-<method>[-ft<steps>]`` (gates_budget fine-tunes max(finetune_steps) steps)."""
    runs = []
    for method in [m for m in METHODS if m in methods]:
        if method == GATES:
            runs.append(MethodRun(method, 0, name))
        elif method == GATES_BUDGET:
            runs.append(MethodRun(method, max(finetune_steps), f"{name}-{method}"))
        elif method in LAYOUT_METHODS:
            runs += [MethodRun(method, n, f"{name}-{method}" + (f"-ft{n}" if n else "")) for n in finetune_steps]
        else:
            runs.append(MethodRun(method, 0, f"{name}-{method}"))
    return runs


@dataclass
class ObjectiveConfig:
    metric: str = M.BLEU
    mode: Literal["max", "min"] = "max"


@dataclass
class SchedulerConfig:
    """Early stopping of the gate trials (sweeps/scheduler.py): none, or MO-ASHA over the sweep's objectives."""

    kind: Literal["none", "mo_asha"] = "none"
    grace_steps: int | None = None  # the first rung, in optimizer steps (null: train.eval_every); a multiple of it
    reduction_factor: float = 3.0  # a rung keeps the best 1/reduction_factor of the trials recorded there
    heads_at_rungs: Literal["l0", "open_heads"] = "l0"  # how a rung ranks open_heads: l0, the expected open heads


@dataclass
class SearchConfig:
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0  # seed of the sampler
    num_samples: int = 8  # trials in all (grid: at most the size of the grid)
    max_concurrent: int = 2  # trials running at once
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)  # first trials, completed from prune
    max_failures: int = 2  # a crashed trial is retried from its last checkpoint this many times
    trial_seeds: Literal["per_trial", "fixed"] = "per_trial"  # per_trial: train.seed + a hash of the trial's params
    startup_trials: int | None = None  # tpe: random trials before it models the space (null: Optuna's 10)
    population_size: int | None = None  # nsga2: trials per generation (null: Optuna's 50)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # multi-objective early stopping
    reuse_actors: bool = False  # true: a trial's Ray worker goes on to the next trial (docs/sweeps.md: its caveat)


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
class ClaimConfig:
    """A target the sweep states among its own budget methods (test.claims): ``method`` against ``against`` at every
    budget both ran, fine-tuned equally long (the longest both have), met or missed in the comparison. ``by: mean``:
    met where ``method``'s seed-mean test BLEU at least matches; ``by: interval``: met where it beats it, the paired
    bootstrap interval of the difference wholly above 0."""

    method: str = GATES_BUDGET
    against: str = IMPORTANCE
    by: Literal["mean", "interval"] = "interval"


@dataclass
class HeldOutTestConfig:
    """Scoring on the test split once the sweep has finished: every Pareto-optimal trial of each method folder
    (chosen on the validation split) and every trial of the budget methods. Nothing is chosen on it."""

    enabled: bool = False
    split: Literal["test"] = "test"  # the corpus's test split (Multi30k: test_2016_flickr)
    beam_size: int = 5  # beam search, as NMT papers report
    batch_size: int = 64  # sentences per decoding batch
    max_sentences: int | None = None  # the split's first N sentences (null: all of them; --smoke-test: 16)
    bootstrap: int = 1000  # paired bootstrap resamples of the test sentences (sacrebleu's default)
    target_removed: float = 0.75  # the target table: at least this share of the gated heads removed ...
    tolerance: float = 0.5  # ... within this much test BLEU of the base model
    # other sweeps in the same results root (their names) whose fine-tuned budget methods and gate front join the
    # comparison as their own rows, "<method> [<name>]", each compared with this sweep's same method at the same
    # budget; they must have fine-tuned the same base model (their base models' test translations are compared);
    # one not in the results root is left out, and the sweep's own name is skipped
    include: list[str] = field(default_factory=list)
    claims: list[ClaimConfig] = field(default_factory=list)  # targets among the methods, met or missed per budget


@dataclass
class LatencyConfig:
    """After a trial's last evaluation, its pruned model's decoding speed against the base model's (model/latency.py):
    ``speedup`` in trials.csv, the report and W&B, and an objective a sweep may name."""

    enabled: bool = False
    sentences: int = 64  # the first N sources of the evaluation split, the same for both models
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])  # speedup/b<N> each; `speedup`: the largest
    beam_size: int = 5  # beam search, as deployed
    rounds: int = 3  # alternating rounds (base, pruned, ...); the median of each counts


@dataclass
class ConstraintConfig:
    """One constraint on the gate trials' final scores (sweeps/constraints.py): exactly one bound."""

    metric: str = M.BLEU
    min: float | None = None  # feasible: metric >= min
    max: float | None = None  # feasible: metric <= max
    min_relative_to_base: float | None = None  # feasible: metric >= the base model's + this (e.g. -0.5 BLEU)
    max_relative_to_base: float | None = None  # feasible: metric <= the base model's + this


@dataclass
class SweepSchema:
    name: str | None = None  # folder name under storage; default: the file's stem
    # gates | gates_budget | importance | iterative | random | scratch, or a list of them (run in that order; scratch
    # needs gates)
    method: Any = GATES
    base: Any = None  # a run config: a path (relative to the sweep file) or an inline mapping
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    space: dict[str, Any] = field(default_factory=dict)  # dotted config key -> {loguniform|uniform|choice|randint}
    objectives: list[ObjectiveConfig] = field(default_factory=_default_objectives)
    constraints: list[ConstraintConfig] = field(default_factory=list)  # Optuna constraints (tpe, nsga2 honour them)
    latency: LatencyConfig = field(default_factory=LatencyConfig)  # each trial's pruned model timed against its base
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: str = DEFAULT_STORAGE  # results root (relative to the working directory) or a URI (s3://...)
    storage_shared: bool = False  # true: `storage` is a folder every node mounts at the same path (NFS, ...)
    keep_checkpoints: int = 2  # checkpoints Ray keeps per trial (the newest)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    test: HeldOutTestConfig = field(default_factory=HeldOutTestConfig)


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
