"""The resolved sweep: a validated :class:`Sweep` and the run config of each of its trials. No Ray here.

Every trial's run config comes from one function, :func:`run_config`: the base run config, the stage's overrides
and the trial's sampled values, in that order, then what the sweep derives from them (the freezing rule, the
trial's seed, its threads and device), validated once. ``sweeps.validate`` builds the :class:`Sweep`;
``sweeps.tuner`` turns it into Ray Tune objects.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import Config, ConfigError, GateConfig, TrainConfig, config_from_dict, flatten, set_key

from .results import BUDGET, LAYOUT_SEED, join_storage
from .schema import (
    GATES_BUDGET,
    IMPORTANCE,
    METHODS,
    RUN_LOCATION_KEYS,
    Dimension,
    MethodRun,
    ObjectiveConfig,
    ResourcesConfig,
    SearchConfig,
    SweepSchema,
    auto_freeze,
    is_base_key,
    method_runs,
)
from .storage import StorageError, check_uri


def _with(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for key, value in values.items():
        set_key(out, key, copy.deepcopy(value))
    return out


# Keys added to the config after base models were first hashed, left out of the hash while at their defaults (none
# of them changes what a base model learns), and keys removed since, hashed at the one value every base trained
# before their removal had: a base model keeps its hash across versions, so a later sweep still finds and reuses it.
HASH_ADDED_KEYS = {"gates.target_warmup", "gates.lagrangian_lr", "distill.weight", "distill.temperature",
                   "distill.hidden_weight", "distill.teacher"}
HASH_REMOVED_KEYS = {"gates.target_gain": 0.05}


def base_hash(cfg: Config) -> str:
    """Short stable hash of everything that decides what a base model learns (not where or how fast it runs)."""
    defaults = flatten(Config().to_dict())
    flat = {k: v for k, v in flatten(cfg.to_dict()).items()
            if k not in RUN_LOCATION_KEYS and not (k in HASH_ADDED_KEYS and v == defaults[k])}
    flat.update(HASH_REMOVED_KEYS)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def trial_seed(base_seed: int, params: dict[str, Any]) -> int:
    """A seed that differs between trials, is stable for a trial across restarts, and is reproducible."""
    return base_seed + zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()) % 1_000_003


def run_config(base: dict[str, Any], overrides: list[dict[str, Any]], *, freeze: Any = None,
               seed_params: dict[str, Any] | None = None, resources: ResourcesConfig | None = None) -> Config:
    """The one place a trial's run config is assembled and validated.

    1) ``base`` with each mapping of ``overrides`` applied in turn (stage overrides, then sampled values);
    2) ``train.freeze`` from ``freeze``: ``"auto"`` (each side without gated attention) or a list; None keeps it;
    3) ``train.seed`` + a stable hash of ``seed_params`` when given (a per-trial seed);
    4) threads and device from ``resources``, progress bars off;
    5) validated once: a :class:`~model.config.ConfigError` names the key, the value and what is allowed.
    """
    data = copy.deepcopy(base)  # the caller's mappings are never changed
    for values in overrides:  # 1)
        data = _with(data, values)
    flat = flatten(data)
    if freeze == "auto":  # 2)
        freeze = auto_freeze(flat.get("gates.attention", GateConfig().attention))
    if freeze is not None:
        set_key(data, "train.freeze", list(freeze))
    if seed_params is not None:  # 3)
        set_key(data, "train.seed", trial_seed(flat.get("train.seed", TrainConfig().seed), seed_params))
    if resources is not None:  # 4)
        set_key(data, "train.threads", max(1, int(resources.cpus)))
        set_key(data, "train.device", "cuda" if resources.gpus > 0 else "cpu")
        set_key(data, "train.progress", False)
    return config_from_dict(data)  # 5)


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
    def scratch_resources(self) -> ResourcesConfig:
        return self.schema.baselines.scratch_resources or self.pretrain_resources

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
        """The base model's run config for a trial's params (only their base keys count), placed on
        ``pretrain.resources``."""
        return run_config(self.base, [self.schema.pretrain.set, self.base_params(params or {})],
                          resources=self.pretrain_resources)

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The run config of one prune trial: base + prune overrides + the sampled params, frozen by
        ``prune.freeze``, with its own seed (``search.trial_seeds``)."""
        per_trial = self.search.trial_seeds == "per_trial" and "train.seed" not in params
        return run_config(self.base, [self.schema.prune.set, params], freeze=self.schema.prune.freeze,
                          seed_params=params if per_trial else None, resources=self.resources)

    def base_experiments(self) -> list[tuple[dict[str, Any], str, str]]:
        """(variant, hash, name) of every base model the sweep trains; its experiment is
        ``<storage>/pretrained/<name>``."""
        keys = [(variant, base_hash(self.base_config(variant))) for variant in self.base_variants()]
        return [(variant, key, f"base-{key}") for variant, key in keys]

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
        """The experiment folders of this sweep, in the order they run (:func:`sweeps.schema.method_runs`)."""
        return method_runs(self.name, self.methods, self.schema.baselines.finetune_steps)

    def gated_heads(self) -> int:
        """Heads of the gated attention types (prune.set's gates.attention) in the base model."""
        cfg = self.trial_config({})
        return sum(cfg.model.n_heads * cfg.model.layers(k) for k in cfg.gates.attention)

    def budgets(self) -> list[int]:
        """Head budgets of the budget methods (gates_budget, importance, iterative, random)."""
        total = self.gated_heads()
        if self.schema.baselines.budgets:
            return sorted(set(self.schema.baselines.budgets))
        if self.smoke_test:
            return [max(1, total // 4)]
        return sorted({max(1, round(total * f)) for f in (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1)})

    def sample_seed(self, seed: int = 0) -> int:
        """The seed of the training batches head importance is measured on for the method's seed ``seed``: the
        prune config's own train.seed plus ``seed``, so that one seed's importance layout is the same fine-tuned or
        not, and the spread over seeds includes the choice of batches."""
        return run_config(self.base, [self.schema.prune.set]).train.seed + seed

    def baseline_config(self, finetune_steps: int, params: dict[str, Any], method: str = IMPORTANCE) -> Config:
        """The config of an importance/iterative/random trial (``method``), before pruning sets ``model.heads``:
        the prune recipe with gates off, ``finetune_steps`` steps and ``baselines.set``."""
        off = {"gates.mode": "none", "gates.penalty": 0.0, "gates.target_open": None,
               "train.max_steps": finetune_steps}
        return self._budget_config([self.schema.prune.set, off, self.schema.baselines.set], params, method)

    def gates_budget_config(self, params: dict[str, Any]) -> Config:
        """The config of a gates_budget trial: the prune recipe with its gates (``prune.set``), the baselines'
        fine-tuning recipe (``baselines.set``) and their longest fine-tuning, ending with exactly
        ``baseline.budget`` heads (``gates.target_open``)."""
        steps = {"train.max_steps": max(self.schema.baselines.finetune_steps),
                 "gates.target_open": int(params[BUDGET])}
        return self._budget_config([self.schema.prune.set, self.schema.baselines.set, steps], params, GATES_BUDGET)

    def _budget_config(self, overrides: list[dict[str, Any]], params: dict[str, Any], method: str) -> Config:
        """A budget method's trial config. per_trial: its own seed from its params and its method, so that the
        seeds of a point differ and no two methods share a seed stream (two methods that keep the same heads still
        fine-tune them with different noise: importance and iterative often agree at small budgets); fixed:
        train.seed + its ``baseline.seed``, the same in every method (common random numbers, by choice)."""
        per_trial = self.search.trial_seeds == "per_trial"
        if not per_trial and params.get(LAYOUT_SEED):
            seed = run_config(self.base, overrides).train.seed + int(params[LAYOUT_SEED])
            overrides = [*overrides, {"train.seed": seed}]
        return run_config(self.base, overrides, freeze=self.schema.prune.freeze,
                          seed_params={**params, "method": method} if per_trial else None, resources=self.resources)

    def scratch_config(self, heads: dict[str, list[int]], seed: int = 0) -> Config:
        """A ``scratch`` trial: the base recipe (``pretrain.set``), the prune stage's evaluation settings,
        ``baselines.scratch_set`` and the layout ``heads``, from random initialisation with the base recipe's
        train.seed plus ``seed`` (seed 0 of the full layout is the base model's own training), placed on
        ``baselines.scratch_resources``."""
        evaluation = {k: v for k, v in flatten(self.schema.prune.set).items() if k.startswith("eval.")}
        layout = {"model.heads": copy.deepcopy(heads), "gates.mode": "none"}
        overrides = [self.schema.pretrain.set, evaluation, self.schema.baselines.scratch_set, layout]
        if seed:
            overrides.append({"train.seed": run_config(self.base, overrides).train.seed + seed})
        return run_config(self.base, overrides, resources=self.scratch_resources)

    def points_to_evaluate(self) -> list[dict[str, Any]]:
        """The configured first points, completed with the prune config's own values for unnamed keys."""
        prune = flatten(_with(self.base, self.schema.prune.set))
        defaults = flatten(Config().to_dict())
        return [{d.key: point.get(d.key, prune.get(d.key, defaults.get(d.key))) for d in self.space}
                for point in self.search.points_to_evaluate]


def resolve_storage(storage: str) -> str:
    """Ray needs an absolute storage path; URIs (s3://, gs://, ...) pass checked (no query string, a bucket)."""
    if "://" in storage:
        try:
            return check_uri(storage)
        except StorageError as exc:
            raise ConfigError(f"storage (or --results): {exc}") from None
    return str(Path(os.path.expandvars(os.path.expanduser(storage))).resolve())


def schema_dict(sweep: Sweep) -> dict[str, Any]:
    """The resolved sweep as plain data (recorded in the sweep folder and in W&B)."""
    return {**dataclasses.asdict(sweep.schema), "name": sweep.name, "base": sweep.base, "storage": sweep.storage}
