"""The baselines a gated sweep is compared with, each a trial that lands on the same Pareto chart. No Ray here.

- ``importance``: Michel et al. 2019. Head importance |dL/dxi_h| summed over training batches of the converged
  model, normalised per layer; the least important heads go until ``budget`` heads of the gated attention types
  are left; then the model is evaluated (``finetune_steps`` 0) or fine-tuned that many steps first.
- ``iterative``: Michel et al.'s iterative variant (their sec. 4.2): remove ``iterative_fraction`` of the heads by
  importance, re-score the heads that are left, repeat until the budget is reached.
- ``random``: the same with a random choice of heads (one layout per seed): the null baseline.
- ``gates_budget``: the gates themselves at the baselines' budgets (``gates.target_open``), fine-tuned as long as
  the baselines, so that every method is compared at the same head count after the same training.
- ``scratch``: a head layout the gated trials found (heads per layer), trained from random initialisation with the
  base model's recipe (Voita et al. 2019, Table 2): does pruning a trained model beat training the small one?

:func:`pruned_start` turns the base checkpoint into the starting checkpoint of an ``importance``/``random`` trial;
``trainable.py`` then runs it as any trial (:func:`sweeps.trial.run_trial` with ``init_from``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model import metrics as M
from model.checkpoint import (
    checkpoint_config,
    checkpoint_tokenizers,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from model.config import ATTENTION_TYPES, Config, GateConfig
from model.data import collate, load_data, make_batches
from model.prune import Layout, head_importance, importance_layout, iterative_layout, prune_model, random_layout
from model.transformer import Transformer

from .schema import IMPORTANCE, ITERATIVE, LAYOUT_METHODS, RANDOM


def importance_batches(cfg: Config, tokenizers, count: int, log: Callable[[str], None] = print,
                       seed: int | None = None) -> list:
    """The first ``count`` training batches of epoch 0 in the order of ``seed`` (default: ``cfg.train.seed``)."""
    data = load_data(cfg.data, cfg.eval.split, log, tokenizers, max_positions=cfg.model.max_positions)
    train = data.splits["train"]
    d = cfg.data
    order = make_batches(train.src_lengths, train.tgt_lengths, d.max_tokens, d.batch_size, d.bucket_size,
                         cfg.train.seed if seed is None else seed, 0)
    return [collate(train, index) for index in order[:count]]


def budget_layout(model: Transformer, method: str, kinds: list[str], budget: int, seed: int, batches: list,
                  fraction: float = 0.1, log: Callable[[str], None] | None = None) -> Layout:
    """The heads to keep: the ``budget`` most important (``importance``), those left by iterative pruning
    (``iterative``, ``fraction`` of the heads per round) or a random choice (``random``)."""
    if method == IMPORTANCE:
        return importance_layout(head_importance(model, batches), model, kinds, budget)
    if method == ITERATIVE:
        return iterative_layout(model, kinds, budget, batches, fraction, log)
    if method == RANDOM:
        return random_layout(model, kinds, budget, seed)
    raise ValueError(f"method {method!r}: allowed {', '.join(LAYOUT_METHODS)}")


def pruned_start(base_checkpoint: str | Path, cfg: Config, method: str, budget: int, seed: int, batches: int,
                 out: str | Path, log: Callable[[str], None] = print, sample_seed: int | None = None,
                 fraction: float = 0.1) -> Config:
    """Prune the base model to ``budget`` heads of ``cfg.gates.attention`` and write it to ``out``.

    ``seed`` picks a random layout; ``sample_seed`` the training batches importance is summed over (the same for
    one seed of a budget, so that its importance layout is the same fine-tuned or not); ``fraction``: the share of
    heads iterative pruning removes per round.

    ``cfg`` is the trial's config with the base model's architecture (gates off); the returned config is the same
    with ``model.heads`` set to the layout, ready for a run that starts from ``out``.
    """
    payload = load_checkpoint(base_checkpoint)
    base_cfg, tokenizers = checkpoint_config(payload), checkpoint_tokenizers(payload)
    model = Transformer(base_cfg.model, len(tokenizers.src), len(tokenizers.tgt), base_cfg.gates)
    load_model_state(model, payload["model"], source=str(base_checkpoint))
    if model.gate_mode == "learned":
        raise ValueError(f"{base_checkpoint}: a model with learned gates; the baselines start from a plain model")
    sample = importance_batches(cfg, tokenizers, batches, log, sample_seed) if method != RANDOM else []
    layout = budget_layout(model, method, list(cfg.gates.attention), budget, seed, sample, fraction, log)
    pruned = prune_model(model, layout)
    trial = copy.deepcopy(cfg)
    trial.model, trial.gates = copy.deepcopy(pruned.cfg), GateConfig(mode="none", attention=list(cfg.gates.attention))
    start = copy.deepcopy(base_cfg)
    start.model, start.gates = trial.model, trial.gates
    save_checkpoint(out, {"model": pruned.state_dict(), "pruned_from": str(base_checkpoint),
                          "layout": {f"{kind}/{layer}": heads for (kind, layer), heads in layout.items()}},
                    start, tokenizers)
    kept = {kind: [len(layout.get((kind, i), [])) for i in range(len(pruned.cfg.heads[kind]))]
            for kind in cfg.gates.attention}
    log(f"{method} pruning to {budget} heads: kept per layer {kept}")
    return trial


def layout_heads(row: dict[str, Any], cfg: Config, kinds: list[str]) -> dict[str, list[int]]:
    """Heads per layer of each type in ``kinds`` from a trials-table row's ``open_heads/<type>/<layer>`` columns."""
    out = {}
    for kind in kinds:
        if kind not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention type {kind!r}")
        keys = [M.open_heads_layer_key(kind, layer) for layer in range(cfg.model.layers(kind))]
        missing = [k for k in keys if row.get(k) is None or row.get(k) != row.get(k)]  # None or NaN
        if missing:
            raise ValueError(f"trial {row.get('trial_id')}: no {', '.join(missing)} in the trials table")
        out[kind] = [int(row[k]) for k in keys]
    return out


def layout_name(heads: dict[str, list[int]]) -> str:
    """A short, stable label of a layout, e.g. ``enc_self=4,0,2``."""
    return ";".join(f"{kind}={','.join(str(n) for n in counts)}" for kind, counts in sorted(heads.items()))


def parse_layout_name(name: str) -> dict[str, list[int]]:
    """The inverse of :func:`layout_name`."""
    out = {}
    for part in name.split(";"):
        kind, _, counts = part.partition("=")
        out[kind] = [int(n) for n in counts.split(",")] if counts else []
    return out
