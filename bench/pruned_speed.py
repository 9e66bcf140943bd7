"""What removing 75% of the encoder's heads buys: the pruned model against the unpruned one, same inputs, same run.

    python bench/pruned_speed.py [--threads 2] [--src-len 512] [--layers 6] [--rounds 5]

A model of Multi30k-base width (d_model 256, 8 heads, d_ff 1024) with ``--layers`` encoder layers; its encoder
gates are set so that 2 of 8 heads per layer stay open (75% removed), and ``model.prune.prune_model`` removes the
rest. Prints the parameter ratio, the encoder forward time ratio on long sources (``--src-len`` tokens: attention
grows with its square, the rest linearly) and beam-5 sentences/s on the same sources, each the median of
``--rounds`` alternating rounds; the last line is ``encoder_speedup=X`` (target >= 1.5 on long sources).
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
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beam-sentences", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, n_heads=8, encoder_layers=args.layers, decoder_layers=3, d_ff=1024, dropout=0.0,
                      max_positions=args.src_len + 64, share_embeddings=True)
    model = Transformer(cfg, 8000, 8000, GateConfig(mode="learned", attention=["enc_self"])).eval()
    with torch.no_grad():
        for _, _, gate in model.gates():
            gate.log_alpha.copy_(torch.tensor([6.0, 6.0] + [-6.0] * 6))  # 2 of 8 heads open per layer
    pruned = prune_model(model)
    src = torch.randint(4, 8000, (args.batch, args.src_len))
    print(f"torch {torch.__version__}, {args.threads} threads; d_model 256, 8 heads, {args.layers}+3 layers; "
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
