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

What else would (``--structure``): where heads alone cannot reach a speed-up, what the rest of the model's shape
buys. Models of the Multi30k base shape (``--config``, default sweeps/runs/multi30k_base.yaml) with random
weights, each changed in one respect or several: heads (a quarter of every block, 18 of 72; or 6 of 72 with no
decoder self-attention), the feed-forward width halved, one decoder layer instead of three (a deep encoder and
shallow decoder, Kasai et al. 2021), the output vocabulary halved (what a vocabulary shortlist buys). Each decodes the same random sources of
``--src-len`` tokens (Multi30k: about 14) for exactly ``--out-len`` steps with beam 5, at batch 64 and at batch 1,
against the base in alternating rounds (median); the ratio is the base's time over the variant's. The last lines:
``structure_speedup_<variant>=X`` at batch 64:

    python bench/pruned_speed.py --structure [--threads 2] [--src-len 14] [--out-len 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def structure_variants(cfg: ModelConfig) -> dict[str, ModelConfig]:
    """The base shape and its variants (see the module's doc), by name."""
    n = cfg.n_heads

    def heads(enc: int, dec_self: int, cross: int, decoder_layers: int = cfg.decoder_layers) -> dict[str, list[int]]:
        return {"enc_self": [enc] * cfg.encoder_layers, "dec_self": [dec_self] * decoder_layers,
                "dec_cross": [cross] * decoder_layers}

    quarter = n // 4
    return {
        "base": cfg,
        "heads_quarter": dataclasses.replace(cfg, heads=heads(quarter, quarter, quarter)),
        "heads_6_of_72": dataclasses.replace(cfg, heads=heads(1, 0, 1)),
        "ffn_half": dataclasses.replace(cfg, d_ff=cfg.d_ff // 2),
        "decoder_1_layer": dataclasses.replace(cfg, decoder_layers=1),
        "heads_quarter_ffn_half": dataclasses.replace(cfg, d_ff=cfg.d_ff // 2,
                                                      heads=heads(quarter, quarter, quarter)),
        "heads_quarter_decoder_1_layer": dataclasses.replace(cfg, decoder_layers=1,
                                                        heads=heads(quarter, quarter, quarter, 1)),
        "heads_quarter_decoder_1_ffn_half": dataclasses.replace(cfg, decoder_layers=1, d_ff=cfg.d_ff // 2,
                                                           heads=heads(quarter, quarter, quarter, 1)),
        "vocab_half": cfg,  # built with half the output vocabulary below
    }


def structure(args) -> int:
    """The ``--structure`` mode (see the module's doc)."""
    from model.config import load_config

    base_cfg = load_config(args.config)
    cfg = dataclasses.replace(base_cfg.model, dropout=0.0, heads=None)  # inference, every head
    vocab = base_cfg.data.vocab_size
    models = {}
    for name, variant in structure_variants(cfg).items():
        torch.manual_seed(0)
        v = vocab // 2 if name == "vocab_half" else vocab
        models[name] = Transformer(variant, v, v, GateConfig(mode="none")).eval().to(args.device)
    gen = torch.Generator().manual_seed(0)
    sources = torch.randint(4, vocab // 2, (64, args.src_len), generator=gen).to(args.device)
    single = sources[: args.batch1_sentences]

    def decode(model: Transformer, src: torch.Tensor, batch: int) -> None:
        for i in range(0, len(src), batch):
            translate_ids(model, src[i:i + batch], beam_size=5, max_len_a=0.0, max_len_b=args.out_len)

    times: dict[str, dict[int, list[float]]] = {name: {64: [], 1: []} for name in models}
    with torch.no_grad():
        for m in models.values():  # warm-up
            decode(m, sources[:8], 8)
        for _ in range(args.rounds):  # alternate, so that drifts of the machine hit every model
            for name, m in models.items():
                times[name][64] += timed(lambda m=m: decode(m, sources, 64), 1)
                times[name][1] += timed(lambda m=m: decode(m, single, 1), 1)
    med = {name: {b: statistics.median(t) for b, t in per.items()} for name, per in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; shape of {args.config}: "
          f"d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.encoder_layers}+{cfg.decoder_layers} layers, d_ff "
          f"{cfg.d_ff}, vocabulary {vocab}; random weights; beam 5, sources of {args.src_len} tokens, exactly "
          f"{args.out_len} steps; 64 sources at batch 64, {len(single)} at batch 1; median of {args.rounds} "
          f"alternating rounds")
    for name, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        heads = head_counts(m)["total"]
        print(f"  {name}: heads {heads}, parameters {params:,}; batch 64 {med[name][64] * 1000:.0f} ms "
              f"({med['base'][64] / med[name][64]:.3f}x), batch 1 {med[name][1] * 1000:.0f} ms "
              f"({med['base'][1] / med[name][1]:.3f}x)")
    for name in models:
        if name != "base":
            print(f"structure_speedup_{name}={med['base'][64] / med[name][64]:.3f}")
    return 0


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
    parser.add_argument("--structure", action="store_true", help="what the model's shape buys besides heads")
    parser.add_argument("--config", default="sweeps/runs/multi30k_base.yaml", help="with --structure: the shape")
    parser.add_argument("--out-len", type=int, default=16, help="with --structure: decoding steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.structure:
        if args.src_len == parser.get_default("src_len"):
            args.src_len = 14  # a Multi30k sentence
        if args.batch1_sentences == parser.get_default("batch1_sentences"):
            args.batch1_sentences = 16
        return structure(args)
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
