"""Scoring a model on a held-out split: translations, sacrebleu BLEU and chrF, teacher-forced NLL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sacrebleu.metrics import BLEU as BLEUMetric
from sacrebleu.metrics import CHRF as CHRFMetric

from . import metrics as M
from .config import ATTENTION_TYPES, Config, EvalConfig
from .data import Data, EncodedSplit, Tokenizers, collate, eval_batches, pad_rows
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


def evaluate_model(model: Transformer, data: Data, cfg: Config,
                   device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, details) of ``model`` on the held-out split ``cfg.eval.split`` of ``data`` (never training data):
    sacrebleu BLEU and chrF with their signatures, teacher-forced NLL, open heads in all, per type and per layer,
    expected L0; details hold translation samples and the signatures."""
    e = cfg.eval
    split = data.splits[e.split]
    hyps = translate_split(model, split, data.tokenizers, e, device)
    refs = split.tgt_text[: len(hyps)]
    s = score(hyps, refs)
    heads = model.open_heads()
    metrics = {
        M.BLEU: s.bleu, M.CHRF: s.chrf, M.BLEU_SIGNATURE: s.bleu_signature, M.CHRF_SIGNATURE: s.chrf_signature,
        M.VALID_NLL: teacher_forced_nll(model, split, e.batch_size, device, e.max_sentences),
        M.OPEN_HEADS: heads["total"],
        **{M.open_heads_key(k): heads[k] for k in ATTENTION_TYPES},
        **{M.open_heads_layer_key(kind, layer): int(n)
           for kind, entry in model.gate_report().items() for layer, n in enumerate(entry["open"])},
        **{M.open_heads_layer_key(kind, layer): int(n)  # a physically pruned model: the heads it kept
           for kind, counts in (cfg.model.heads or {}).items() for layer, n in enumerate(counts)},
    }
    with torch.no_grad():
        metrics[M.L0] = float(model.expected_l0())
        metrics[M.PENALTY] = float(model.penalty_l0())
    samples = [{"source": split.src_text[i], "reference": refs[i], "hypothesis": hyps[i]}
               for i in range(min(e.samples, len(hyps)))]
    details = {"samples": samples, "bleu_signature": s.bleu_signature, "chrf_signature": s.chrf_signature,
               "sentences": len(hyps)}
    return metrics, details


def held_out(path: str, split: str, device: str = "cpu", data_dir: str | None = None,
             log=print) -> tuple[Transformer, Tokenizers, EncodedSplit]:
    """(model in eval mode, its tokenizers, ``split`` of the corpus its config names, encoded) of a checkpoint file.

    ``data_dir``: where that corpus's downloads lie, when not where the checkpoint's config says."""
    from .checkpoint import checkpoint_config, load_checkpoint
    from .data import build_corpus, encode_split
    from .translate import load_for_inference

    payload = load_checkpoint(path, map_location=device)
    cfg = checkpoint_config(payload)
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    model, tok = load_for_inference(path, device, payload)
    corpus = build_corpus(cfg.data, log)
    return model, tok, encode_split(tok, *corpus.split(split), truncate=cfg.model.max_positions)


def evaluate_checkpoint(path: str, split: str, eval_cfg: EvalConfig, device: str = "cpu",
                        log=print, data_dir: str | None = None) -> tuple[Scores, list[str], list[str], list[str]]:
    """Score a checkpoint on ``split`` of the corpus its config names: (scores, sources, references, hypotheses).

    ``data_dir``: where that corpus's downloads lie, when not where the checkpoint's config says."""
    model, tok, encoded = held_out(path, split, device, data_dir, log)
    hyps = translate_split(model, encoded, tok, eval_cfg, torch.device(device))
    n = len(hyps)
    return score(hyps, encoded.tgt_text[:n]), encoded.src_text[:n], encoded.tgt_text[:n], hyps


def main(argv: list[str] | None = None, prog: str = "python -m model.evaluate") -> int:
    """BLEU and chrF (sacrebleu, with their signatures) of a checkpoint on a held-out split of its corpus."""
    import json
    import sys
    import time

    from .checkpoint import CheckpointError
    from .cli import add_data_dir, add_out, command_parser, data_dir, out_file
    from .corpora import CorpusError

    parser = command_parser(prog, main.__doc__, [
        f"{prog} results/runs/multi30k_base/averaged.pt --split test --beam 5 --data-dir ../shared/data",
        f"{prog} pruned.pt --split valid --beam 1 --out results/eval",
    ])
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_out(parser, "writes evaluation-<split>.json (scores, signatures and every translation) into it")
    add_data_dir(parser)
    args = parser.parse_args(argv)
    eval_cfg = EvalConfig(split=args.split, beam_size=args.beam, length_penalty=args.length_penalty,
                          batch_size=args.batch_size)
    start = time.perf_counter()
    try:
        target = out_file(args.out, f"evaluation-{args.split}.json") if args.out else None
        s, src, refs, hyps = evaluate_checkpoint(args.checkpoint, args.split, eval_cfg, args.device,
                                                 log=lambda m: print(m, file=sys.stderr), data_dir=data_dir(args))
    except (CheckpointError, CorpusError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"{args.split}: BLEU {s.bleu:.2f} chrF {s.chrf:.2f} ({len(hyps)} sentences, beam {args.beam}, "
          f"{seconds:.0f} s)\n  {s.bleu_signature}\n  {s.chrf_signature}")
    if target is not None:
        from .files import atomic_write

        record = {"checkpoint": args.checkpoint, "split": args.split, "beam": args.beam,
                  "length_penalty": args.length_penalty, "bleu": s.bleu, "chrf": s.chrf,
                  "bleu_signature": s.bleu_signature, "chrf_signature": s.chrf_signature, "seconds": seconds,
                  "translations": [{"source": a, "reference": b, "hypothesis": c} for a, b, c in zip(src, refs, hyps)]}
        atomic_write(target, json.dumps(record, ensure_ascii=False, indent=1))
        print(f"written to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
