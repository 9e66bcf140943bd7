"""Encoder–decoder Transformer (Vaswani et al. 2017) whose attention heads can carry Hard Concrete gates.

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``D`` d_model, ``H`` heads, ``Dh`` head width,
``V`` vocabulary. Token id 0 is padding (see ``model.data.PAD_ID``); sequences are padded on the right.

Three attention types can be gated: ``enc_self``, ``dec_self`` and ``dec_cross``. A gate multiplies each head's
output before the heads are concatenated and projected (Voita et al. 2019, sec. 4.1).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import ATTENTION_TYPES, GateConfig, ModelConfig
from .data import PAD_ID
from .gates import HardConcreteGate

# A decoder cache: one dict per decoder layer, holding "self_k", "self_v" [B, H, t, Dh] and "cross_k",
# "cross_v" [B, H, S, Dh].
Cache = list[dict[str, torch.Tensor]]


class MultiHeadAttention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``, with an optional gate per head.

    Self-attention uses one fused q/k/v projection; cross-attention fuses k/v.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, self_attention: bool,
                 head_dim: int | None = None) -> None:
        super().__init__()
        # a physically pruned block keeps fewer heads of the original width (head_dim); 0 heads: only out.bias
        self.n_heads, self.head_dim = n_heads, head_dim or d_model // n_heads
        inner = n_heads * self.head_dim
        self.self_attention = self_attention
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a block with every head pruned
            if self_attention:
                self.qkv = nn.Linear(d_model, 3 * inner)
            else:
                self.q = nn.Linear(d_model, inner)
                self.kv = nn.Linear(d_model, 2 * inner)
            self.out = nn.Linear(inner, d_model)
        self.dropout = dropout
        self.gate: HardConcreteGate | None = None
        self.gate_active = False  # False: gates fixed open (or absent)
        self.head_mask: torch.Tensor | None = None  # [H] multiplier of each head's output (importance scores)
        self.keep_weights = False  # True: store the attention probabilities of each forward (for analysis)
        self.last_weights: torch.Tensor | None = None  # (B, H, L, S) when keep_weights

    def _split(self, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
        """[B, L, parts*H*Dh] -> parts tensors of (B, H, L, Dh)."""
        B, L, _ = x.shape
        x = x.view(B, L, parts, self.n_heads, self.head_dim)  # (B, L, parts, H, Dh)
        x = x.permute(2, 0, 3, 1, 4)  # (parts, B, H, L, Dh)
        return list(x.unbind(0))

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output for cross-attention: two (B, H, S, Dh)."""
        k, v = self._split(self.kv(memory), 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        key_keep: torch.Tensor | None = None,
        causal: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        prefix: str = "",
    ) -> torch.Tensor:
        """Attend from ``x`` [B, L, D] to itself or to ``memory`` [B, S, D].

        Args:
            key_keep: [B, S] bool, True for real (non-padding) keys; None attends to every key.
            causal: mask future positions (training-time decoder self-attention).
            cache: incremental decoding state; self-attention appends this step's k/v under
                ``prefix + "k"``/``"v"``, cross-attention reads k/v projected once.
        Returns:
            [B, L, D]
        """
        B, L, _ = x.shape
        if self.n_heads == 0:  # every head pruned: the block adds its output bias and nothing else
            return self.out.bias.expand(B, L, -1)
        # 1) project q, k, v
        if self.self_attention:
            q, k, v = self._split(self.qkv(x), 3)  # (B, H, L, Dh) each
            if cache is not None:
                if prefix + "k" in cache:
                    k = torch.cat([cache[prefix + "k"], k], dim=2)  # (B, H, t, Dh)
                    v = torch.cat([cache[prefix + "v"], v], dim=2)
                cache[prefix + "k"], cache[prefix + "v"] = k, v
        else:
            (q,) = self._split(self.q(x), 1)  # (B, H, L, Dh)
            if cache is not None and prefix + "k" in cache:
                k, v = cache[prefix + "k"], cache[prefix + "v"]
            else:
                assert memory is not None, "cross-attention needs the encoder output"
                k, v = self.project_kv(memory)  # (B, H, S, Dh)
                if cache is not None:
                    cache[prefix + "k"], cache[prefix + "v"] = k, v
        # 2) scaled dot-product attention; on a CPU in fp32 even under bf16 autocast: its fused CPU kernel is
        # several times slower in bf16 than in fp32 (bench/throughput.py --amp bf16 measures what that buys)
        cpu_bf16 = q.dtype == torch.bfloat16 and q.device.type == "cpu"
        if cpu_bf16:
            q, k, v = q.float(), k.float(), v.float()
        mask = None if key_keep is None else key_keep[:, None, None, :]  # (B, 1, 1, S)
        with torch.autocast("cpu", enabled=False) if cpu_bf16 else contextlib.nullcontext():
            heads = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
            )  # (B, H, L, Dh)
        if self.keep_weights:  # the probabilities SDPA used, recomputed (analysis only; no dropout)
            scores = q @ k.transpose(-2, -1) / self.head_dim**0.5  # (B, H, L, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            if causal:
                future = torch.ones(L, k.size(2), dtype=torch.bool, device=q.device).triu(1 + k.size(2) - L)
                scores = scores.masked_fill(future, float("-inf"))
            self.last_weights = scores.softmax(dim=-1).detach()
        # 3) gate each head's output
        if self.gate is not None and self.gate_active:
            z = self.gate(B)  # (B or 1, H)
            heads = heads * z[:, :, None, None].to(heads.dtype)
        if self.head_mask is not None:
            heads = heads * self.head_mask[None, :, None, None].to(heads.dtype)
        # 4) concatenate heads and project
        heads = heads.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim)  # (B, L, H*Dh)
        return self.out(heads)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class _Sublayer(nn.Module):
    """Residual wrapper: pre-norm ``x + f(LN(x))`` or post-norm ``LN(x + f(x))``."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))

    def attend(self, x: torch.Tensor, attn: MultiHeadAttention, fn) -> torch.Tensor:
        """The sub-layer around ``attn``: with every head pruned the block adds only its output bias, so a pre-norm
        sub-layer skips the norm and the projections whole (``x + bias``); post-norm still normalises the sum."""
        if attn.n_heads == 0:
            bias = self.dropout(attn.out.bias.expand_as(x))
            return x + bias if self.pre_norm else self.norm(x + bias)
        return self(x, fn)


def _attention(cfg: ModelConfig, kind: str, layer: int) -> MultiHeadAttention:
    """The attention block ``kind`` of ``layer``: n_heads heads, or the count a pruned model kept."""
    heads = cfg.n_heads if cfg.heads is None or kind not in cfg.heads else cfg.heads[kind][layer]
    return MultiHeadAttention(cfg.d_model, heads, cfg.attention_dropout, self_attention=kind != "dec_cross",
                              head_dim=cfg.d_model // cfg.n_heads)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = _attention(cfg, "enc_self", layer)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.sub_attn = _Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_ffn = _Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        x = self.sub_attn.attend(x, self.self_attn, lambda h: self.self_attn(h, key_keep=src_keep))
        return self.sub_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = _attention(cfg, "dec_self", layer)
        self.cross_attn = _attention(cfg, "dec_cross", layer)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.sub_self = _Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_cross = _Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_ffn = _Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(
        self,
        y: torch.Tensor,
        memory: torch.Tensor,
        src_keep: torch.Tensor,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Training (no cache) masks the future; a cached step holds one query that may see every cached key.
        causal = cache is None and y.size(1) > 1
        y = self.sub_self.attend(y, self.self_attn, lambda h: self.self_attn(h, causal=causal, cache=cache,
                                                                             prefix="self_"))
        y = self.sub_cross.attend(y, self.cross_attn, lambda h: self.cross_attn(h, memory, key_keep=src_keep, cache=cache,
                                                                                prefix="cross_"))
        return self.sub_ffn(y, self.ffn)


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed position encodings (Vaswani et al. 2017, sec. 3.5): [n_positions, D]."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return table


class Positions(nn.Module):
    """Sinusoidal (a buffer) or learned (a parameter) position encodings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.learned = cfg.positions == "learned"
        if self.learned:
            self.table = nn.Parameter(torch.randn(cfg.max_positions, cfg.d_model) * cfg.d_model**-0.5)
        else:
            self.register_buffer("table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        if offset + length > self.table.size(0):
            raise ValueError(
                f"sequence of {offset + length} tokens exceeds model.max_positions={self.table.size(0)}"
            )
        return self.table[offset : offset + length]  # (L, D)


def token_losses(logits: torch.Tensor, gold: torch.Tensor,
                 label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy (differentiable), summed NLL (detached) and the real-token mask of
    ``logits`` [N, V] against ``gold`` [N], padding left out, from one log-softmax: F.cross_entropy's own definition,
    (1 - e) x NLL + e x the mean over the vocabulary of -log p, without a second pass for the unsmoothed NLL."""
    keep = gold.ne(PAD_ID)
    logp = F.log_softmax(logits, dim=-1)
    nll = F.nll_loss(logp, gold, ignore_index=PAD_ID, reduction="sum")
    if label_smoothing == 0.0:
        return nll, nll.detach(), keep
    smooth = -logp.sum(-1).masked_fill(~keep, 0.0).sum()
    return (1.0 - label_smoothing) * nll + smooth * (label_smoothing / logits.size(-1)), nll.detach(), keep


@dataclass
class LossOutput:
    ce_sum: torch.Tensor  # summed (label-smoothed) cross-entropy over real target tokens
    nll_sum: torch.Tensor  # summed negative log-likelihood without smoothing (for perplexity)
    n_tokens: int


class Transformer(nn.Module):
    """Encoder–decoder Transformer with optional Hard Concrete head gates.

    Use ``encode``, ``decode``, ``decode_step`` and ``loss``; gates are inspected through ``gates()``,
    ``expected_l0()``, ``penalty_l0()`` and ``gate_report()``.
    """

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, gates: GateConfig | None = None) -> None:
        super().__init__()
        if cfg.share_embeddings and src_vocab != tgt_vocab:
            raise ValueError("model.share_embeddings needs one vocabulary for both sides")
        self.cfg = cfg
        self.gate_cfg = gates or GateConfig()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.scale = math.sqrt(cfg.d_model)
        self.src_embed = nn.Embedding(src_vocab, cfg.d_model, padding_idx=PAD_ID)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(tgt_vocab, cfg.d_model, padding_idx=PAD_ID)
        self.src_pos, self.tgt_pos = Positions(cfg), Positions(cfg)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.output = nn.Linear(cfg.d_model, tgt_vocab)
        self._reset_parameters()
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight
        self._build_gates()

    # -- construction -----------------------------------------------------------------------------

    def _reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name and "pos" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias") and "norm" not in name:
                nn.init.zeros_(p)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, mean=0.0, std=self.cfg.d_model**-0.5)
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()

    def attention_blocks(self) -> Iterator[tuple[str, int, MultiHeadAttention]]:
        """Every attention block as (attention type, layer index, module)."""
        for i, layer in enumerate(self.encoder):
            yield "enc_self", i, layer.self_attn
        for i, layer in enumerate(self.decoder):
            yield "dec_self", i, layer.self_attn
            yield "dec_cross", i, layer.cross_attn

    def _build_gates(self) -> None:
        g = self.gate_cfg
        for kind, _, attn in self.attention_blocks():
            if g.mode != "none" and kind in g.attention:
                attn.gate = HardConcreteGate(
                    attn.n_heads, g.temperature, g.gamma, g.zeta, g.init_log_alpha, g.noise == "per_example"
                )
        self.set_gate_mode(g.mode)

    def set_gate_mode(self, mode: str) -> None:
        """Switch built gates between 'open' (fixed at 1, frozen) and 'learned'."""
        if mode not in ("none", "open", "learned"):
            raise ValueError(f"gate mode must be 'none', 'open' or 'learned', not {mode!r}")
        if mode == "learned" and next(self.gates(), None) is None:
            raise ValueError("this model has no gates to learn (gates.mode was 'none' when it was built)")
        for _, _, attn in self.attention_blocks():
            if attn.gate is not None:
                attn.gate_active = mode == "learned"
                attn.gate.log_alpha.requires_grad_(mode == "learned")
        self.gate_mode = mode

    def gates(self) -> Iterator[tuple[str, int, HardConcreteGate]]:
        """Built gates as (attention type, layer index, gate), in a fixed order."""
        for kind, i, attn in self.attention_blocks():
            if attn.gate is not None:
                yield kind, i, attn.gate

    def freeze(self, parts: list[str]) -> None:
        """Stop gradients to any of 'encoder', 'decoder', 'embeddings'. Gates stay trainable.

        'encoder' is the encoder layers and final norm; 'decoder' the decoder layers, final norm and output
        bias (and the output matrix when it is not tied); 'embeddings' the token embeddings (and with them a
        tied output matrix) and learned positions.
        """
        groups: dict[str, list[nn.Parameter]] = {
            "encoder": [*self.encoder.parameters(), *self.encoder_norm.parameters()],
            "decoder": [*self.decoder.parameters(), *self.decoder_norm.parameters(), self.output.bias],
            "embeddings": [*self.src_embed.parameters(), *self.tgt_embed.parameters(),
                           *self.src_pos.parameters(), *self.tgt_pos.parameters()],
        }
        if not self.cfg.tie_output:
            groups["decoder"].append(self.output.weight)
        gate_params = {id(g.log_alpha) for _, _, g in self.gates()}
        for part in parts:
            for p in groups[part]:
                if id(p) not in gate_params:
                    p.requires_grad_(False)

    # -- forward passes ---------------------------------------------------------------------------

    def encode(self, src: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """src: [B, S] token ids -> (memory [B, S, D], src_keep [B, S] bool); each layer's output is appended to
        ``hidden`` when given (layer-wise distillation)."""
        src_keep = src.ne(PAD_ID)
        x = self.src_embed(src) * self.scale + self.src_pos(src.size(1))  # (B, S, D)
        x = self.embed_dropout(x)
        for layer in self.encoder:
            x = layer(x, src_keep)
            if hidden is not None:
                hidden.append(x)
        return self.encoder_norm(x), src_keep

    def _embed_target(self, tgt: torch.Tensor, offset: int = 0) -> torch.Tensor:
        y = self.tgt_embed(tgt) * self.scale + self.tgt_pos(tgt.size(1), offset)  # (B, T, D)
        return self.embed_dropout(y)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor,
               hidden: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Teacher-forced decoding. tgt_in: [B, T] (BOS-prefixed) -> logits [B, T, V]; each layer's output is
        appended to ``hidden`` when given."""
        y = self._embed_target(tgt_in)
        for layer in self.decoder:
            y = layer(y, memory, src_keep)
            if hidden is not None:
                hidden.append(y)
        return self.output(self.decoder_norm(y))

    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder]

    def decode_step(
        self, tokens: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor, cache: Cache, step: int
    ) -> torch.Tensor:
        """One incremental step. tokens: [B, 1], the token at position ``step`` -> logits [B, V]."""
        y = self._embed_target(tokens, offset=step)  # (B, 1, D)
        for layer, layer_cache in zip(self.decoder, cache):
            y = layer(y, memory, src_keep, cache=layer_cache)
        return self.output(self.decoder_norm(y))[:, -1]  # (B, V)

    @staticmethod
    def reorder_cache(cache: Cache, self_index: torch.Tensor, cross_index: torch.Tensor | None = None) -> Cache:
        """Select batch rows of the cache: ``self_index`` [B'] for self-attention k/v (which depend on the
        prefix), ``cross_index`` [B'] for cross-attention k/v (which depend on the source only; None keeps
        them as they are)."""
        out = []
        for layer in cache:
            new = {}
            for k, v in layer.items():
                if k.startswith("self_"):
                    new[k] = v.index_select(0, self_index)
                else:
                    new[k] = v if cross_index is None else v.index_select(0, cross_index)
            out.append(new)
        return out

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float) -> LossOutput:
        """Summed token-level cross-entropy of ``tgt_out`` [B, T] given ``src`` [B, S] and ``tgt_in`` [B, T]."""
        memory, src_keep = self.encode(src)
        logits = self.decode(tgt_in, memory, src_keep).float()  # (B, T, V)
        ce, nll, keep = token_losses(logits.view(-1, logits.size(-1)), tgt_out.reshape(-1), label_smoothing)
        return LossOutput(ce_sum=ce, nll_sum=nll, n_tokens=int(keep.sum()))

    # -- gates: penalty and reporting -----------------------------------------------------------

    def expected_l0(self) -> torch.Tensor:
        """Expected number of open heads, sum over all gated heads of P(gate != 0) (scalar)."""
        terms = [g.p_open().sum() for _, _, g in self.gates()]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def penalty_l0(self) -> torch.Tensor:
        """The L0 term that lambda multiplies: the per-layer expected L0 averaged over gated blocks.

        Averaging over gated attention blocks (as Voita et al.'s code does) keeps lambda's scale independent of
        depth and of how many attention types are gated, so a lambda found on a 3-layer model means the same
        pressure per block on a 6-layer one. With ``H`` heads per block the term lies in [0, H].
        """
        terms = [g.p_open().sum() for _, _, g in self.gates()]
        if not terms or self.gate_mode != "learned":
            return torch.zeros((), device=self.output.weight.device)
        return torch.stack(terms).mean()

    @torch.no_grad()
    def gate_report(self) -> dict[str, dict[str, list[list[float]]]]:
        """Per attention type, per layer: eval gate values, P(open), log_alpha and the number of open heads
        (eval gate > 0), as lists for JSON.

        Types without gates are absent. With gates 'open' every eval gate is reported as 1.
        """
        report: dict[str, dict[str, list]] = {}
        for kind, _, g in self.gates():
            entry = report.setdefault(kind, {"gate": [], "p_open": [], "log_alpha": [], "open": []})
            fixed = self.gate_mode != "learned"
            gate = [1.0] * g.log_alpha.numel() if fixed else g.eval_gates().tolist()
            entry["gate"].append(gate)
            entry["p_open"].append([1.0] * g.log_alpha.numel() if fixed else g.p_open().tolist())
            entry["log_alpha"].append(g.log_alpha.tolist())
            entry["open"].append(sum(v > 0 for v in gate))
        return report

    def open_heads(self) -> dict[str, int]:
        """Heads whose eval gate is > 0, per attention type and in total ('total').

        Ungated attention types count all their heads: they are all in use.
        """
        counts = {kind: 0 for kind in ATTENTION_TYPES}
        with torch.no_grad():
            for kind, _, attn in self.attention_blocks():
                if attn.gate is not None and self.gate_mode == "learned":
                    counts[kind] += int((attn.gate.eval_gates() > 0).sum())
                else:
                    counts[kind] += attn.n_heads
        counts["total"] = sum(counts[k] for k in ATTENTION_TYPES)
        return counts

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
