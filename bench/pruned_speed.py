"""What pruning heads buys in decoding speed: pruned models against the unpruned one, same inputs, same run.

Real models (``--base``): trained checkpoints, e.g. the base model of a sweep and the pruned models its trials
exported (``headsweep export``, or any gated checkpoint: it is physically pruned first), each timed against the base
on the test split of the base's corpus, beam 5, at batch 1 (``--batch1-sentences`` sources) and at batch 64
(``--sentences`` sources), on the same threads, in alternating rounds (model/latency.py); each model's test BLEU
(sacrebleu, beam 5, the whole split) beside its ratio. The last lines: ``pruned_beam_speedup=X`` and
``pruned_test_bleu_delta=Y`` of the fastest model at batch 64 within ``--tolerance`` BLEU of the base (or of the
fastest model where none is):

    python bench/pruned_speed.py --base BASE.pt --models A.pt B.pt [--threads 2] [--device cpu]

Random weights (no ``--base``): a model of Multi30k-base width (d_model 256, 8 heads, d_ff 1024) with ``--layers``
encoder layers; its encoder gates are set so that 2 of 8 heads per layer stay open (75% removed), and
``model.prune.prune_model`` removes the rest. Prints the parameter ratio, the encoder forward time ratio on long
sources (``--src-len`` tokens: attention grows with its square, the rest linearly) and beam-5 sentences/s on the
same sources, each the median of ``--rounds`` alternating rounds; the last line is ``encoder_speedup=X``:

    python bench/pruned_speed.py [--threads 2] [--src-len 512] [--layers 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.config import GateConfig, ModelConfig
from model.decoding import translate_ids
from model.prune import head_counts, prune_model
from model.transformer import Transformer


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def real_models(args) -> int:
    """The ``--base`` mode (see the module's doc)."""
    from model.config import EvalConfig
    from model.evaluate import held_out, score, translate_split
    from model.latency import time_models
    from model.prune import prune_model

    base, tok, split = held_out(args.base, args.split, args.device, args.data_dir, log=lambda _: None)
    models = {"base": base}
    for path in args.models:
        model, _, _ = held_out(path, args.split, args.device, args.data_dir, log=lambda _: None)
        models[path] = prune_model(model).to(args.device)
    heads = {name: head_counts(m) for name, m in models.items()}
    full = EvalConfig(split=args.split, beam_size=5, batch_size=64)
    bleu = {name: score(translate_split(m, split, tok, full, torch.device(args.device)), split.tgt_text).bleu
            for name, m in models.items()}
    batch64 = time_models(models, split, args.sentences, [64], 5, args.rounds, args.device)
    batch1 = time_models(models, split, args.batch1_sentences, [1], 5, args.rounds, args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; test split "
          f"{args.split} ({len(split.src)} sentences): BLEU on all of it, speed on the first {args.sentences} "
          f"(batch 64) and {args.batch1_sentences} (batch 1), beam 5, median of {args.rounds} alternating rounds")
    rows = []
    for name, m in models.items():
        ratio64 = batch64[name][64] / batch64["base"][64]
        ratio1 = batch1[name][1] / batch1["base"][1]
        rows.append((name, ratio64, bleu[name] - bleu["base"]))
        print(f"  {name}: heads {heads[name]}, test BLEU {bleu[name]:.2f} ({bleu[name] - bleu['base']:+.2f}); "
              f"output tokens/s batch 64 {batch64[name][64]:.0f} ({ratio64:.3f}x), batch 1 {batch1[name][1]:.0f} "
              f"({ratio1:.3f}x)")
    pruned = [r for r in rows if r[0] != "base"]
    close = [r for r in pruned if r[2] >= -args.tolerance]
    best = max(close or pruned, key=lambda r: r[1])
    which = f"within {args.tolerance} BLEU of the base" if close else f"(none within {args.tolerance} BLEU of the base)"
    print(f"fastest {which}: {best[0]}")
    print(f"pruned_beam_speedup={best[1]:.3f}")
    print(f"pruned_test_bleu_delta={best[2]:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="the unpruned model's checkpoint: time real models against it")
    parser.add_argument("--models", nargs="+", default=[], help="pruned (or gated) checkpoints, with --base")
    parser.add_argument("--split", default="test", help="held-out split of the base's corpus (default test)")
    parser.add_argument("--sentences", type=int, default=384, help="sources timed at batch 64")
    parser.add_argument("--batch1-sentences", type=int, default=64, help="sources timed at batch 1")
    parser.add_argument("--tolerance", type=float, default=0.5, help="test BLEU a model may lose to count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="where the corpus lies (default: $HEADSWEEP_DATA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beam-sentences", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.base:
        if not args.models:
            parser.error("--base needs --models")
        return real_models(args)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, n_heads=8, encoder_layers=args.layers, decoder_layers=3, d_ff=1024, dropout=0.0,
                      max_positions=args.src_len + 64, share_embeddings=True)
    model = Transformer(cfg, 8000, 8000, GateConfig(mode="learned", attention=["enc_self"])).eval()
    with torch.no_grad():
        for _, _, gate in model.gates():
            gate.log_alpha.copy_(torch.tensor([6.0, 6.0] + [-6.0] * 6))  # 2 of 8 heads open per layer
    pruned = prune_model(model).to(args.device)
    model = model.to(args.device)
    src = torch.randint(4, 8000, (args.batch, args.src_len), device=args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.device}; d_model 256, 8 heads, "
          f"{args.layers}+3 layers; "
          f"encoder heads {head_counts(model)['enc_self']} -> {head_counts(pruned)['enc_self']}")
    n_a, n_b = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    print(f"parameters: {n_a:,} -> {n_b:,} (ratio {n_a / n_b:.3f})")

    with torch.no_grad():
        model.encode(src[:2]), pruned.encode(src[:2])  # warm-up
        enc = {"unpruned": [], "pruned": []}
        for _ in range(args.rounds):  # alternate, so that drifts of the machine hit both
            enc["unpruned"] += timed(lambda: model.encode(src), 1)
            enc["pruned"] += timed(lambda: pruned.encode(src), 1)
        short = src[: args.beam_sentences, : args.src_len]
        beam = {"unpruned": [], "pruned": []}
        for _ in range(max(2, args.rounds // 2)):
            beam["unpruned"] += timed(lambda: translate_ids(model, short, beam_size=5, max_len_a=0.0, max_len_b=30), 1)
            beam["pruned"] += timed(lambda: translate_ids(pruned, short, beam_size=5, max_len_a=0.0, max_len_b=30), 1)
    e_a, e_b = statistics.median(enc["unpruned"]), statistics.median(enc["pruned"])
    b_a, b_b = statistics.median(beam["unpruned"]), statistics.median(beam["pruned"])
    print(f"encoder forward, {args.batch} x {args.src_len} tokens: unpruned {e_a * 1000:.0f} ms, pruned "
          f"{e_b * 1000:.0f} ms (rounds: {', '.join(f'{t * 1000:.0f}' for t in enc['unpruned'])} | "
          f"{', '.join(f'{t * 1000:.0f}' for t in enc['pruned'])})")
    print(f"beam 5, {args.beam_sentences} sources of {args.src_len} tokens, 30 output tokens: unpruned "
          f"{args.beam_sentences / b_a:.2f} sentences/s, pruned {args.beam_sentences / b_b:.2f} sentences/s")
    print(f"beam_speedup={b_a / b_b:.3f}")
    print(f"encoder_speedup={e_a / e_b:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
