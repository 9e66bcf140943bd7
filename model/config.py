"""One typed config tree for a training run, loaded and validated in one place.

Every default lives in the dataclasses below and nowhere else. ``load_config`` reads YAML, applies
``--set key=value`` overrides, converts the nested mapping into the dataclass tree and validates it; any
problem raises :class:`ConfigError` naming the key, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .files import atomic_write

AttentionType = Literal["enc_self", "dec_self", "dec_cross"]
ATTENTION_TYPES: tuple[str, ...] = get_args(AttentionType)
Freezable = Literal["encoder", "decoder", "embeddings"]


class ConfigError(ValueError):
    """A config key has a bad value, is unknown, or is inconsistent with another key."""


@dataclass
class ModelConfig:
    d_model: int = 256  # width of embeddings and residual stream
    n_heads: int = 4  # attention heads per attention block; must divide d_model
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024  # hidden width of the feed-forward blocks
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout inside the feed-forward block
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 1024  # longest sequence (tokens) the position table covers
    norm: Literal["pre", "post"] = "pre"  # layer-norm placement
    share_embeddings: bool = False  # one embedding table for source and target (needs data.joint_vocab)
    tie_output: bool = True  # output projection shares the target embedding matrix
    # heads kept per layer after physical pruning, per attention type (e.g. {enc_self: [3, 0, 8]}); 0 removes the
    # block; head width stays d_model / n_heads. null: n_heads everywhere
    heads: dict[str, list[int]] | None = None

    def layers(self, attention_type: str) -> int:
        """Blocks of one attention type: encoder layers for enc_self, decoder layers for dec_self and dec_cross."""
        return self.encoder_layers if attention_type == "enc_self" else self.decoder_layers


@dataclass
class GateConfig:
    """Hard Concrete head gates (Louizos et al. 2018; Voita et al. 2019)."""

    mode: Literal["none", "open", "learned"] = "none"  # none: plain model; open: gates fixed at 1
    attention: list[AttentionType] = field(default_factory=lambda: ["enc_self"])  # which attention is gated
    penalty: float = 0.0  # lambda, weight of the L0 penalty
    temperature: float = 0.33  # beta of the Hard Concrete distribution
    gamma: float = -0.1  # lower end of the stretch interval
    zeta: float = 1.1  # upper end of the stretch interval
    init_log_alpha: float = 2.0  # initial log_alpha of every head (2.0: eval gate 0.96, P(open) 0.94)
    noise: Literal["per_example", "per_batch"] = "per_example"  # one gate sample per sentence or per batch
    lr_scale: float = 1.0  # learning rate of log_alpha = this x the model's learning rate at every step
    # the gates' own peak learning rate (the weights' schedule applies to it); null: lr_scale x train.lr. Set one of
    # the two: gates.lr lets a sweep search how fast gates move independently of how fast the weights do
    lr: float | None = None
    # at the end of a run (learned gates, no head budget): heads whose eval gate is above 0 but below this are
    # removed together if the held-out BLEU without them is at least the BLEU with them (minus min_open_tolerance),
    # so that "open heads" counts what the pruned model needs; 0 turns this off
    min_open: float = 0.1
    min_open_tolerance: float = 0.0  # BLEU the removal of those heads may cost (0: none)
    # head budget: end with exactly this many gated heads open, in all gated attention together (an integer) or per
    # attention type (a mapping, e.g. {enc_self: 6, dec_cross: 4}); null: the penalty lambda decides (Voita et al.).
    # The gates then train under a Lagrangian constraint (Wang et al. 2020; Xia et al. 2022) instead of the penalty:
    # lambda1 * (s - t) + lambda2 * (s - t)^2 for the expected fraction s of closed heads and the target fraction t,
    # which moves linearly from 0 to 1 - target_open / heads over the first target_warmup of the pruning steps;
    # lambda1 and lambda2 start at 0 and are raised by their own Adam (gradient ascent, lagrangian_lr). Every
    # evaluation keeps the target_open heads with the highest log_alpha (a deterministic top-k), and at
    # target_fix_at x train.max_steps those heads are kept for good, the others closed, the constraint dropped
    target_open: int | dict[str, int] | None = None
    target_warmup: float = 0.5  # fraction of the pruning steps (target_fix_at x max_steps) the target moves over
    lagrangian_lr: float = 0.01  # learning rate of lambda1 and lambda2 (ascent)
    target_fix_at: float = 0.75  # fraction of train.max_steps after which the kept heads are fixed


@dataclass
class DistillConfig:
    """Knowledge distillation from the unpruned model (Hinton et al. 2015; layer-wise as Xia et al. 2022): while
    pruning and fine-tuning, the loss is (1 - weight) x cross-entropy + weight x T^2 x KL(teacher || student) at
    temperature T, per target token, plus hidden_weight x the mean squared distance between the student's and the
    teacher's layer outputs (every encoder and decoder layer). The teacher runs in eval mode, frozen, without
    gates, and is saved in no checkpoint."""

    weight: float = 0.0  # share of the distillation term in the loss; 0 with hidden_weight 0: no teacher
    temperature: float = 2.0
    hidden_weight: float = 0.0  # layer-wise distillation of hidden states; 0: off
    # the teacher's checkpoint; in a sweep the driver gives every trial of a base its base model (leave null)
    teacher: str | None = None

    @property
    def enabled(self) -> bool:
        return self.weight > 0.0 or self.hidden_weight > 0.0


@dataclass
class SyntheticConfig:
    seed: int = 1234  # seed of the generated language pair (not of training)
    train_size: int = 20000  # sentence pairs
    valid_size: int = 300
    test_size: int = 300
    max_modifiers: int = 2  # adjectives per noun phrase: 0..max_modifiers
    relative_clause_prob: float = 0.3  # probability of a relative clause on the subject


@dataclass
class FilesConfig:
    """Local parallel corpora: ``PREFIX.<src_lang>`` / ``PREFIX.<tgt_lang>`` files, or one TSV file per split."""

    format: Literal["parallel", "tsv"] = "parallel"  # parallel: two aligned files; tsv: source<TAB>target
    on_bad_line: Literal["error", "skip"] = "error"  # a TSV line without two fields: stop, or skip and count
    train: str | None = None  # prefix (parallel) or path (tsv); $VARS and ~ expand; relative to the working folder
    valid: str | None = None
    test: str | None = None


@dataclass
class DataConfig:
    corpus: Literal["synthetic", "files", "multi30k", "wmt_en_ru", "hf"] = "synthetic"  # corpus source
    hf_name: str | None = None  # for corpus hf: a Hugging Face datasets name, NAME or NAME/CONFIG
    src_lang: str = "en"  # source language code (file suffix for `files`; direction for downloads)
    tgt_lang: str = "de"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    data_dir: str | None = None  # downloaded corpora; default $HEADSWEEP_DATA or <cache>/data
    mirror: str | None = None  # base URL to download a known corpus from instead of its upstream address
    cache_dir: str | None = None  # tokenizer and token-id cache; default $HEADSWEEP_CACHE or ~/.cache/headsweep
    max_ratio: float | None = 3.0  # training pairs whose token-length ratio exceeds this are dropped, and counted
    joint_vocab: bool = True  # one sentencepiece model for both sides
    vocab_size: int = 1000  # per sentencepiece model
    spm_model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"
    character_coverage: float = 1.0
    max_tokens: int | None = 4096  # batch budget in (padded) tokens of the longer side
    batch_size: int | None = None  # batch size in sentences; when set, replaces max_tokens
    max_len: int = 128  # training pairs with a longer side (in tokens) are dropped, and counted
    bucket_size: int = 100  # batches sorted by length within pools of this many batches


@dataclass
class TrainConfig:
    seed: int = 1  # seed of initialisation, dropout, gate noise and data order
    lr: float = 5.0e-4  # peak learning rate (noam: the multiplier of d_model^-0.5)
    schedule: Literal["noam", "inverse_sqrt", "constant", "cosine"] = "inverse_sqrt"
    warmup_steps: int = 1000  # linear warm-up (noam, inverse_sqrt, cosine)
    min_lr: float = 0.0  # floor of the cosine schedule
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1.0e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; null: no clipping
    accumulation: int = 1  # batches per optimizer step
    max_steps: int = 10000  # optimizer steps
    max_epochs: int | None = None  # stop after this many passes over the data, whichever comes first
    max_minutes: float | None = None  # also stop once this much wall time (training + evaluation) is spent
    eval_every: int = 1000  # steps (or epochs, see eval_unit) between evaluations; each writes a checkpoint
    eval_unit: Literal["steps", "epochs"] = "steps"  # what eval_every counts
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (the best by BLEU is kept too)
    freeze: list[Freezable] = field(default_factory=list)  # parts that do not train
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; bf16 also on a CPU (AMX), fp16 on a GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # torch.set_num_threads; null: leave torch's default
    compile: bool = False  # torch.compile the model
    progress: bool = True  # progress bar on stderr
    # optimizer steps between training-log records (train_log.jsonl; a sweep sends them to W&B at their step):
    # training loss, learning rates, distillation term, the head budget's multipliers and targets, tokens/s; 0: none
    log_every: int = 100


@dataclass
class EvalConfig:
    split: Literal["valid", "test"] = "valid"  # held-out split scored at every evaluation
    beam_size: int = 1  # 1: greedy
    length_penalty: float = 1.0  # GNMT alpha; 0 disables
    max_len_a: float = 1.5  # hypotheses stop at a * source length + b tokens
    max_len_b: int = 10
    batch_size: int = 64  # sentences per decoding batch
    max_sentences: int | None = None  # score only the first N sentences of the split
    samples: int = 3  # translations printed and stored with each evaluation


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# Conversion from plain mappings


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: a mapping.")
        _, item_tp = get_args(tp)
        return {k: _convert(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {_type_name(tp)}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {_type_name(tp)}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {_type_name(tp)}.")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if ok and tp is float and not math.isfinite(value):
        ok = False
    if not ok:
        allowed = "a finite number" if tp is float else _type_name(tp)
        raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {allowed}.")
    return float(value) if tp is float else value


# Keys of earlier versions that no longer exist, with why: a config or checkpoint that names one is refused with it
REMOVED_KEYS = {
    "gates.target_gain": "the head budget's exponential lambda controller was replaced by a Lagrangian constraint "
                         "(gates.target_warmup, gates.lagrangian_lr); a run trained under it cannot be resumed "
                         "with the same trajectory: start it again, without this key",
}


def stored_config(data: dict[str, Any]) -> Config:
    """A config stored by an earlier version (a checkpoint's): a removed key that the run did not use (the head
    budget's gain without a head budget) is dropped; one it used is refused with the reason."""
    gates = data.get("gates")
    if isinstance(gates, dict) and "target_gain" in gates and gates.get("target_open") is None:
        data = {**data, "gates": {k: v for k, v in gates.items() if k != "target_gain"}}
    return config_from_dict(data)


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and values of the wrong type."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Invalid setting for `{where}`: {data!r}. Allowed: a mapping.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in REMOVED_KEYS:
            raise ConfigError(f"`{full}` is no longer a setting: {REMOVED_KEYS[full]}.")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean `{(prefix + '.' if prefix else '') + close[0]}`?" if close else ""
            raise ConfigError(f"Unknown key `{full}`.{hint} Allowed keys here: {', '.join(names)}.")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Validation of ranges and combinations


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"Invalid setting for `{key}`: {value!r}. Allowed: {allowed}.")


def _check_model(m: ModelConfig, g: GateConfig, d: DataConfig) -> None:
    for key in ("d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "max_positions"):
        require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "an integer >= 1")
    require(m.d_model % m.n_heads == 0, "model.n_heads", m.n_heads, f"a divisor of model.d_model={m.d_model}")
    if m.heads is not None:
        layers = {"enc_self": m.encoder_layers, "dec_self": m.decoder_layers, "dec_cross": m.decoder_layers}
        for kind, counts in m.heads.items():
            require(kind in layers, f"model.heads.{kind}", counts, f"keys among {', '.join(layers)}")
            require(len(counts) == layers[kind] and all(0 <= c <= m.n_heads for c in counts),
                     f"model.heads.{kind}", counts, f"{layers[kind]} integers in [0, model.n_heads={m.n_heads}]")
        require(g.mode == "none", "gates.mode", g.mode, "'none' for a physically pruned model (model.heads set)")
    for key in ("dropout", "attention_dropout", "activation_dropout"):
        require(0.0 <= getattr(m, key) < 1.0, f"model.{key}", getattr(m, key), "a number in [0, 1)")
    require(
        not m.share_embeddings or d.joint_vocab,
        "model.share_embeddings",
        m.share_embeddings,
        "false unless data.joint_vocab is true (separate vocabularies cannot share one table)",
    )


def _check_gates(g: GateConfig, m: ModelConfig) -> None:
    require(len(g.attention) > 0, "gates.attention", g.attention, f"a non-empty list of {ATTENTION_TYPES}")
    require(len(set(g.attention)) == len(g.attention), "gates.attention", g.attention, "no repeated entries")
    require(g.penalty >= 0.0, "gates.penalty", g.penalty, "a number >= 0")
    require(g.penalty == 0.0 or g.mode == "learned", "gates.penalty", g.penalty,
             "0 unless gates.mode is 'learned' (there is nothing to penalise)")
    require(g.lr_scale > 0.0, "gates.lr_scale", g.lr_scale, "a number > 0")
    if g.lr is not None:
        require(g.lr > 0.0, "gates.lr", g.lr, "a number > 0, or null (lr_scale x train.lr)")
        require(g.lr_scale == 1.0, "gates.lr_scale", g.lr_scale, "1.0 (the default) when gates.lr is set: set one")
    require(0.0 <= g.min_open < 1.0, "gates.min_open", g.min_open, "a number in [0, 1)")
    require(g.min_open_tolerance >= 0.0, "gates.min_open_tolerance", g.min_open_tolerance, "a number >= 0")
    if g.target_open is not None:
        require(g.mode == "learned", "gates.target_open", g.target_open, "null unless gates.mode is 'learned'")
        for kind, (target, gated) in budget_targets(g, m).items():
            key = "gates.target_open" + ("" if kind == "all" else f".{kind}")
            require(0 <= target <= gated, key, target, f"an integer in [0, {gated}] (the heads of "
                    f"{', '.join(g.attention) if kind == 'all' else kind})")
        if isinstance(g.target_open, dict):
            for kind in g.target_open:
                require(kind in g.attention, f"gates.target_open.{kind}", g.target_open[kind],
                        f"keys among the gated attention types {g.attention}")
    require(0.0 < g.target_warmup <= 1.0, "gates.target_warmup", g.target_warmup, "a number in (0, 1]")
    require(g.lagrangian_lr > 0.0, "gates.lagrangian_lr", g.lagrangian_lr, "a number > 0")
    require(0.0 <= g.target_fix_at <= 1.0, "gates.target_fix_at", g.target_fix_at, "a number in [0, 1]")
    require(g.temperature > 0.0, "gates.temperature", g.temperature, "a number > 0")
    require(g.gamma < 0.0, "gates.gamma", g.gamma, "a number < 0")
    require(g.zeta > 1.0, "gates.zeta", g.zeta, "a number > 1")


def budget_targets(g: GateConfig, m: ModelConfig) -> dict[str, tuple[int, int]]:
    """The head budget's groups: {"all": (target, gated heads)} for one target over every gated attention type, or
    {type: (target, heads of that type)} per attention type named; {} without a budget."""
    if g.target_open is None:
        return {}
    if isinstance(g.target_open, dict):
        return {k: (v, m.n_heads * m.layers(k)) for k, v in g.target_open.items() if k in ATTENTION_TYPES}
    return {"all": (g.target_open, sum(m.n_heads * m.layers(kind) for kind in g.attention))}


def _check_distill(d: DistillConfig) -> None:
    require(0.0 <= d.weight <= 1.0, "distill.weight", d.weight, "a number in [0, 1]")
    require(d.temperature > 0.0, "distill.temperature", d.temperature, "a number > 0")
    require(d.hidden_weight >= 0.0, "distill.hidden_weight", d.hidden_weight, "a number >= 0")


def _check_data(d: DataConfig, m: ModelConfig, e: EvalConfig) -> None:
    s = d.synthetic
    for key in ("train_size", "valid_size", "test_size"):
        require(getattr(s, key) >= 1, f"data.synthetic.{key}", getattr(s, key), "an integer >= 1")
    require(s.max_modifiers >= 0, "data.synthetic.max_modifiers", s.max_modifiers, "an integer >= 0")
    require(0.0 <= s.relative_clause_prob <= 1.0, "data.synthetic.relative_clause_prob",
             s.relative_clause_prob, "a number in [0, 1]")
    if d.corpus == "files":
        for split in ("train", e.split):
            require(getattr(d.files, split) is not None, f"data.files.{split}", None,
                     "a path (a file prefix for format 'parallel', a .tsv file for 'tsv')")
    require(d.src_lang != d.tgt_lang, "data.tgt_lang", d.tgt_lang, "a language other than data.src_lang")
    require(bool(d.src_lang) and bool(d.tgt_lang), "data.src_lang", d.src_lang, "a non-empty language code")
    if d.max_ratio is not None:
        require(d.max_ratio >= 1.0, "data.max_ratio", d.max_ratio, "a number >= 1 or null")
    require(d.vocab_size >= 16, "data.vocab_size", d.vocab_size, "an integer >= 16")
    require(0.0 < d.character_coverage <= 1.0, "data.character_coverage", d.character_coverage,
             "a number in (0, 1]")
    require(d.max_tokens is not None or d.batch_size is not None, "data.max_tokens", d.max_tokens,
             "an integer >= 1 when data.batch_size is null")
    if d.batch_size is not None:
        require(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1 or null")
    if d.max_tokens is not None:
        require(d.max_tokens >= 1, "data.max_tokens", d.max_tokens, "an integer >= 1 or null")
    require(d.max_len >= 2, "data.max_len", d.max_len, "an integer >= 2")
    require(d.max_len + 1 <= m.max_positions, "data.max_len", d.max_len,
             f"at most model.max_positions - 1 = {m.max_positions - 1}")
    if d.max_tokens is not None and d.batch_size is None:
        require(d.max_tokens >= d.max_len + 1, "data.max_tokens", d.max_tokens,
                 f"at least data.max_len + 1 = {d.max_len + 1}, so that the longest pair fits a batch")
    require(d.bucket_size >= 1, "data.bucket_size", d.bucket_size, "an integer >= 1")


def _check_train(t: TrainConfig, g: GateConfig) -> None:
    require(t.lr > 0.0, "train.lr", t.lr, "a number > 0")
    require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "an integer >= 0")
    require(t.warmup_steps >= 1 or t.schedule not in ("noam", "inverse_sqrt"), "train.warmup_steps",
             t.warmup_steps, f"an integer >= 1 for schedule {t.schedule!r}")
    require(0.0 <= t.min_lr < t.lr if t.schedule == "cosine" else t.min_lr >= 0.0, "train.min_lr", t.min_lr,
             "a number in [0, train.lr)")
    require(len(t.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in t.adam_betas), "train.adam_betas",
             t.adam_betas, "two numbers in [0, 1)")
    require(t.adam_eps > 0.0, "train.adam_eps", t.adam_eps, "a number > 0")
    require(t.log_every >= 0, "train.log_every", t.log_every, "an integer >= 0 (0: no training log)")
    require(t.weight_decay >= 0.0, "train.weight_decay", t.weight_decay, "a number >= 0")
    require(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", t.label_smoothing, "a number in [0, 1)")
    if t.grad_clip is not None:
        require(t.grad_clip > 0.0, "train.grad_clip", t.grad_clip, "a number > 0 or null")
    require(t.accumulation >= 1, "train.accumulation", t.accumulation, "an integer >= 1")
    require(t.max_steps >= 0, "train.max_steps", t.max_steps, "an integer >= 0 (0: evaluate the starting model)")
    if t.max_epochs is not None:
        require(t.max_epochs >= 1, "train.max_epochs", t.max_epochs, "an integer >= 1 or null")
    if t.max_minutes is not None:
        require(t.max_minutes > 0, "train.max_minutes", t.max_minutes, "a number > 0 or null")
    require(t.eval_every >= 1, "train.eval_every", t.eval_every, "an integer >= 1")
    require(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "an integer >= 1")
    require(len(set(t.freeze)) == len(t.freeze), "train.freeze", t.freeze, "no repeated entries")
    require(
        not (set(t.freeze) >= {"encoder", "decoder", "embeddings"} and g.mode != "learned"),
        "train.freeze", t.freeze, "a list that leaves something to train (freeze all three only with learned gates)",
    )
    if t.threads is not None:
        require(t.threads >= 1, "train.threads", t.threads, "an integer >= 1 or null")
    require(t.precision != "fp16" or t.device != "cpu", "train.precision", t.precision,
             "'fp32' or 'bf16' on device 'cpu' (fp16 autocast needs a GPU)")


def _check_eval(e: EvalConfig) -> None:
    require(e.beam_size >= 1, "eval.beam_size", e.beam_size, "an integer >= 1")
    require(e.length_penalty >= 0.0, "eval.length_penalty", e.length_penalty, "a number >= 0")
    require(e.max_len_a >= 0.0, "eval.max_len_a", e.max_len_a, "a number >= 0")
    require(e.max_len_b >= 1, "eval.max_len_b", e.max_len_b, "an integer >= 1")
    require(e.batch_size >= 1, "eval.batch_size", e.batch_size, "an integer >= 1")
    if e.max_sentences is not None:
        require(e.max_sentences >= 1, "eval.max_sentences", e.max_sentences, "an integer >= 1 or null")
    require(e.samples >= 0, "eval.samples", e.samples, "an integer >= 0")


def validate(cfg: Config) -> Config:
    """Check ranges and combinations, section by section; return ``cfg`` unchanged or raise :class:`ConfigError`."""
    _check_model(cfg.model, cfg.gates, cfg.data)
    _check_gates(cfg.gates, cfg.model)
    _check_data(cfg.data, cfg.model, cfg.eval)
    _check_train(cfg.train, cfg.gates)
    _check_eval(cfg.eval)
    _check_distill(cfg.distill)
    return cfg


# ---------------------------------------------------------------------------------------------------
# YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key repeated in one mapping (YAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"Duplicate key `{key}` at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key]}) in {loader.name}."
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads `1e-4` (no dot) as a string; accept every float spelling a user would write.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def parse_yaml(text: str, name: str = "<string>") -> Any:
    """Parse YAML with the project's loader (unique keys, YAML 1.2-style floats)."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors and duplicate keys become :class:`ConfigError` with a line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"Config file {path} is not UTF-8 text: invalid byte at line {line}.") from exc
    try:
        data = parse_yaml(text, str(path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error in {path}{line}: {exc.problem}.") from exc
    except yaml.reader.ReaderError as exc:  # a control character
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(f"YAML syntax error in {path} at line {line}: character #x{exc.character:04x} "
                          "is not allowed in YAML (control characters cannot appear in a config).") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error in {path}: {exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(data).__name__}.")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested mapping, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key.sub=value.")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(f"Override {item!r}: value is not valid YAML ({exc}).") from exc
        try:
            set_key(data, key.strip(), value)
        except ConfigError as exc:
            raise ConfigError(f"Override {item!r}: {exc}") from None
    return data


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` (``train.lr``) in a nested mapping, creating sections on the way."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{part}` is not a section.")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any]) -> Config:
    """Convert and validate a plain mapping (a YAML file's content or a checkpoint's stored config)."""
    return validate(from_dict(Config, data))


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the defaults when None), apply overrides, convert and validate."""
    data = read_yaml(path) if path is not None else {}
    try:
        return config_from_dict(apply_overrides(data, list(overrides or [])))
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
