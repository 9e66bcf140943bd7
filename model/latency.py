"""How much faster a pruned model translates than its unpruned base: both decode the same held-out sources with beam
search at each batch size, on the same threads, in alternating rounds (base, pruned, base, pruned, ...: they share
the machine's drift), and the median round of each gives output tokens a second and the ratio.

A gated model is timed as what it would be deployed as: its physically pruned copy (``model.prune.prune_model``),
closed heads removed and an attention block without heads skipped. No Ray here: a sweep trial calls
:func:`speedup_metrics` after its last evaluation (``latency.enabled``), and ``bench/pruned_speed.py`` on exported
models.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from .data import EncodedSplit, eval_batches, pad_rows
from .decoding import translate_ids
from .metrics import SPEEDUP
from .transformer import Transformer


def speedup_key(batch_size: int) -> str:
    return f"{SPEEDUP}/b{batch_size}"


def _batches(split: EncodedSplit, sentences: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    out = []
    for index in eval_batches(split, batch_size, sentences):
        rows = [split.src[i] for i in index]
        out.append(pad_rows(rows, max(len(r) for r in rows)).to(device))
    return out


@torch.no_grad()
def _decode(model: Transformer, batches: Sequence[torch.Tensor], beam: int, device: torch.device) -> tuple[float, int]:
    """Seconds and output tokens of translating every batch."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for src in batches:
        tokens += sum(len(h) + 1 for h in translate_ids(model, src, beam))  # each hypothesis and its EOS
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def time_models(models: dict[str, Transformer], split: EncodedSplit, sentences: int, batch_sizes: Sequence[int],
                beam: int = 5, rounds: int = 3, device: str | torch.device = "cpu") -> dict[str, dict[int, float]]:
    """Output tokens a second of each model at each batch size: the median of ``rounds`` alternating rounds over the
    split's first ``sentences`` sources (after one untimed warm-up batch each)."""
    device = torch.device(device)
    for m in models.values():
        m.eval()
    rates: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batch_sizes} for name in models}
    for b in batch_sizes:
        batches = _batches(split, sentences, b, device)
        for m in models.values():
            _decode(m, batches[:1], beam, device)
        for _ in range(rounds):
            for name, m in models.items():
                seconds, tokens = _decode(m, batches, beam, device)
                rates[name][b].append(tokens / seconds)
    return {name: {b: statistics.median(v) for b, v in per.items()} for name, per in rates.items()}


def speedup_metrics(pruned: Transformer, base: Transformer, split: EncodedSplit, sentences: int,
                    batch_sizes: Sequence[int], beam: int = 5, rounds: int = 3,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """``speedup/b<N>`` per batch size and ``speedup`` (the largest batch): the pruned model's output tokens a
    second over the base model's."""
    rates = time_models({"base": base, "pruned": pruned}, split, sentences, batch_sizes, beam, rounds, device)
    out: dict[str, Any] = {speedup_key(b): rates["pruned"][b] / rates["base"][b] for b in batch_sizes}
    out[SPEEDUP] = out[speedup_key(max(batch_sizes))]
    return out


def checkpoint_speedup(checkpoint: str, base: str, split: str, sentences: int, batch_sizes: Sequence[int],
                       beam: int = 5, rounds: int = 3, device: str = "cpu", data_dir: str | None = None,
                       log=print) -> dict[str, Any]:
    """:func:`speedup_metrics` of a trial's checkpoint (physically pruned first) against its base model's, on the
    first ``sentences`` sources of ``split`` of the checkpoint's corpus."""
    from .evaluate import held_out
    from .prune import prune_model
    from .translate import load_for_inference

    model, _, encoded = held_out(checkpoint, split, device, data_dir, log)
    base_model, _ = load_for_inference(base, device)
    pruned = prune_model(model).to(device)
    return speedup_metrics(pruned, base_model, encoded, sentences, batch_sizes, beam, rounds, device)
