"""Scoring a model on a held-out split: translations, sacrebleu BLEU and chrF, teacher-forced NLL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sacrebleu.metrics import BLEU as BLEUMetric
from sacrebleu.metrics import CHRF as CHRFMetric

from .config import EvalConfig
from .data import EncodedSplit, Tokenizers, pad_rows, collate, eval_batches
from .decoding import translate_ids
from .transformer import Transformer


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str


def score(hypotheses: list[str], references: list[str]) -> Scores:
    """Corpus BLEU and chrF of detokenised text with sacrebleu's default settings."""
    bleu, chrf = BLEUMetric(), CHRFMetric()
    return Scores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )


@torch.no_grad()
def translate_split(
    model: Transformer, split: EncodedSplit, tok: Tokenizers, cfg: EvalConfig, device: torch.device,
    use_cache: bool = True,
) -> list[str]:
    """Detokenised translations of the split's first ``cfg.max_sentences`` sources, in split order."""
    was_training = model.training
    model.eval()
    batches = eval_batches(split, cfg.batch_size, cfg.max_sentences)
    out: dict[int, list[int]] = {}
    for index in batches:
        rows = [split.src[i] for i in index]
        src = pad_rows(rows, max(len(r) for r in rows)).to(device)
        hyps = translate_ids(model, src, cfg.beam_size, cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, use_cache)
        out.update(zip(index, hyps))
    model.train(was_training)
    ordered = [out[i] for i in range(len(out))]
    return tok.tgt.decode(ordered)


@torch.no_grad()
def teacher_forced_nll(model: Transformer, split: EncodedSplit, batch_size: int, device: torch.device,
                       limit: int | None = None) -> float:
    """Mean negative log-likelihood per target token (EOS included) on the split."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for index in eval_batches(split, batch_size, limit):
        batch = collate(split, index).to(device)
        out = model.loss(batch.src, batch.tgt_in, batch.tgt_out, label_smoothing=0.0)
        total += float(out.nll_sum)
        tokens += out.n_tokens
    model.train(was_training)
    return total / max(1, tokens)
