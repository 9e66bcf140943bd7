"""Batched greedy and beam search, with an incremental key/value cache (or full recomputation, for checks).

Both return, per source sentence, the hypothesis token ids without BOS and EOS. Hypotheses stop at EOS or at
``max_len_a * source_length + max_len_b`` tokens.
"""

from __future__ import annotations

import math

import torch

from .data import BOS_ID, EOS_ID, PAD_ID
from .transformer import Transformer


def _max_lengths(src: torch.Tensor, a: float, b: int, model: Transformer) -> torch.Tensor:
    """Per sentence: the most tokens (EOS included) a hypothesis may have: [B]."""
    src_len = src.ne(PAD_ID).sum(1)
    limit = model.tgt_pos.table.size(0)
    return (src_len.float() * a + b).long().clamp(1, limit)


class _Stepper:
    """Computes next-token log-probabilities for growing prefixes, with or without a KV cache."""

    def __init__(self, model: Transformer, memory: torch.Tensor, src_keep: torch.Tensor, use_cache: bool) -> None:
        self.model, self.memory, self.src_keep, self.use_cache = model, memory, src_keep, use_cache
        self.cache = model.new_cache() if use_cache else None

    def log_probs(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix: [N, t] (BOS first) -> log-probabilities of token t+1: [N, V]."""
        if self.use_cache:
            logits = self.model.decode_step(prefix[:, -1:], self.memory, self.src_keep, self.cache, prefix.size(1) - 1)
        else:
            logits = self.model.decode(prefix, self.memory, self.src_keep)[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def select(self, prefix_rows: torch.Tensor, source_rows: torch.Tensor | None = None) -> None:
        """Reorder the decoder state for the next step.

        ``prefix_rows`` [N']: which old row each new prefix continues (beam reordering, dropped sentences);
        ``source_rows`` [N']: which old row holds each new row's source, given only when sentences were dropped
        (beams of one sentence share the encoder output, so reordering beams never moves it).
        """
        if source_rows is not None:
            self.memory = self.memory.index_select(0, source_rows)
            self.src_keep = self.src_keep.index_select(0, source_rows)
        if self.cache is not None:
            self.cache = Transformer.reorder_cache(self.cache, prefix_rows, source_rows)


@torch.no_grad()
def greedy_search(
    model: Transformer, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10, use_cache: bool = True
) -> list[list[int]]:
    """src: [B, S] -> B hypotheses (token ids)."""
    memory, src_keep = model.encode(src)
    B = src.size(0)
    max_len = _max_lengths(src, max_len_a, max_len_b, model)
    stepper = _Stepper(model, memory, src_keep, use_cache)
    prefix = torch.full((B, 1), BOS_ID, dtype=torch.long, device=src.device)
    alive = torch.arange(B, device=src.device)  # original row of each decoder row
    out: list[list[int]] = [[] for _ in range(B)]
    for t in range(int(max_len.max())):
        best = stepper.log_probs(prefix).argmax(-1)  # (N,)
        prefix = torch.cat([prefix, best[:, None]], dim=1)  # (N, t+2)
        finished = best.eq(EOS_ID) | (t + 1 >= max_len[alive])
        for row in finished.nonzero().flatten().tolist():
            tokens = prefix[row, 1:].tolist()
            out[alive[row]] = tokens[:-1] if tokens[-1] == EOS_ID else tokens
        keep = (~finished).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < finished.numel():
            stepper.select(keep, keep)
            prefix, alive = prefix.index_select(0, keep), alive.index_select(0, keep)
    return out


def _length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al. 2016, eq. 14): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    use_cache: bool = True,
) -> list[list[int]]:
    """src: [B, S] -> B best hypotheses (token ids) by score / length penalty.

    Each step takes the 2K best extensions of the K live beams of every sentence; the ones ending in EOS among
    the first K become finished hypotheses, the K best others live on. A sentence is done when it has K
    finished hypotheses or reaches its length limit (live beams are then finished as they are). With K = 1 this
    is exactly greedy search.
    """
    K = beam_size
    B = src.size(0)
    memory, src_keep = model.encode(src)
    max_len = _max_lengths(src, max_len_a, max_len_b, model)
    # 1) one decoder row per (sentence, beam): expand the encoder output K times
    rows = torch.arange(B, device=src.device).repeat_interleave(K)  # (B*K,)
    stepper = _Stepper(model, memory.index_select(0, rows), src_keep.index_select(0, rows), use_cache)
    prefix = torch.full((B * K, 1), BOS_ID, dtype=torch.long, device=src.device)  # (N, t)
    scores = torch.zeros(B, K, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: only beam 0 may expand at step 1
    alive = torch.arange(B, device=src.device)  # original sentence of each live sentence
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for t in range(int(max_len.max())):
        n = alive.numel()
        # 2) scores of every extension: (n, K*V)
        logp = stepper.log_probs(prefix)  # (n*K, V)
        V = logp.size(-1)
        cand = (scores[:, :, None] + logp.view(n, K, V)).view(n, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (n, 2K)
        top_beam, top_tok = top_idx // V, top_idx % V
        # 3) hypotheses ending in EOS among the first K candidates are finished
        is_eos = top_tok.eq(EOS_ID)
        alive_list = alive.tolist()
        at_limit = [t + 1 >= m for m in max_len[alive].tolist()]
        eos_hits = (is_eos[:, :K] & top_scores[:, :K].isfinite()).nonzero().tolist()
        if eos_hits:
            hit_scores, hit_beams = top_scores.tolist(), top_beam.tolist()
            for r, c in eos_hits:
                sent = alive_list[r]
                if len(finished[sent]) < K:
                    tokens = prefix[r * K + hit_beams[r][c], 1:].tolist()
                    norm = _length_penalty(len(tokens) + 1, length_penalty)
                    finished[sent].append((hit_scores[r][c] / norm, tokens))
        # 4) the K best non-EOS candidates live on
        live_scores = top_scores.masked_fill(is_eos, float("-inf"))
        live_scores, pick = live_scores.topk(K, dim=1)  # (n, K)
        beam = top_beam.gather(1, pick)  # (n, K)
        tok = top_tok.gather(1, pick)
        source_rows = (torch.arange(n, device=src.device)[:, None] * K + beam).view(-1)  # (n*K,)
        prefix = torch.cat([prefix.index_select(0, source_rows), tok.view(-1, 1)], dim=1)  # (n*K, t+2)
        scores = live_scores
        # 5) sentences at their length limit finish their live beams; then drop done sentences
        if any(at_limit):
            live = scores.tolist()
            for r in (r for r, limit in enumerate(at_limit) if limit):
                sent = alive_list[r]
                for k in range(K):
                    if len(finished[sent]) >= K or not math.isfinite(live[r][k]):
                        break
                    tokens = prefix[r * K + k, 1:].tolist()
                    finished[sent].append((live[r][k] / _length_penalty(len(tokens), length_penalty), tokens))
        done = torch.tensor([len(finished[s]) >= K or lim for s, lim in zip(alive_list, at_limit)],
                            dtype=torch.bool, device=src.device)
        keep = (~done).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() == n:
            stepper.select(source_rows)
        else:
            keep_rows = (keep[:, None] * K + torch.arange(K, device=src.device)).view(-1)
            stepper.select(source_rows.index_select(0, keep_rows), keep_rows)
            prefix, scores, alive = prefix.index_select(0, keep_rows), scores.index_select(0, keep), alive.index_select(0, keep)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def translate_ids(
    model: Transformer,
    src: torch.Tensor,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    use_cache: bool = True,
) -> list[list[int]]:
    """Greedy search for ``beam_size`` 1, beam search otherwise."""
    if beam_size == 1:
        return greedy_search(model, src, max_len_a, max_len_b, use_cache)
    return beam_search(model, src, beam_size, length_penalty, max_len_a, max_len_b, use_cache)
