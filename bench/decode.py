"""Beam-search speed with the incremental key/value cache against full recomputation, in the same run.

A small model is first trained briefly on the synthetic pair (or given with --checkpoint), so that hypotheses
have realistic lengths; both decoders translate the same held-out sentences and must agree exactly.

Prints ``beam5_cache_speedup=X`` (sentences/s with cache ÷ without) as the last line.

    python bench/decode.py [--checkpoint CKPT] [--beam 5] [--sentences 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import load_config  # noqa: E402
from model.data import EOS_ID, SyntheticCorpus, pad_rows  # noqa: E402
from model.decoding import beam_search  # noqa: E402
from model.train import train  # noqa: E402
from model.translate import load_for_inference  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: train the quickstart model for --train-steps")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "sweeps" / "runs" / "quickstart.yaml",
                      [f"train.max_steps={args.train_steps}", f"train.eval_every={args.train_steps}",
                       "train.progress=false", f"train.device={'cuda' if args.device == 'cuda' else 'cpu'}"])
    ckpt = args.checkpoint
    if ckpt is None:
        out = Path(tempfile.mkdtemp(prefix="headsweep-decode-bench-"))
        print(f"training the quickstart model for {args.train_steps} steps in {out}", file=sys.stderr)
        ckpt = str(train(cfg, out, log=lambda m: print(m, file=sys.stderr)).checkpoint)
    model, tok = load_for_inference(ckpt, args.device)
    src_lines, _ = SyntheticCorpus(cfg.data).split("test")
    ids = [i + [EOS_ID] for i in tok.src.encode(src_lines[: args.sentences])]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), args.batch_size):
        rows = [ids[i] for i in order[start : start + args.batch_size]]
        batches.append(pad_rows(rows, max(len(r) for r in rows)).to(args.device))

    def run(use_cache: bool) -> tuple[float, list[list[int]]]:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        hyps = [h for b in batches for h in beam_search(model, b, beam_size=args.beam, use_cache=use_cache)]
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, hyps

    run(True)  # warm-up
    with_cache, without = [], []
    for _ in range(args.rounds):
        t_cache, h_cache = run(True)
        t_full, h_full = run(False)
        assert h_cache == h_full, "cached and recomputed beam search disagree"
        with_cache.append(len(ids) / t_cache)
        without.append(len(ids) / t_full)
    mean_len = statistics.mean(len(h) for h in h_cache)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}; beam {args.beam}; {len(ids)} sentences in batches of "
          f"{args.batch_size}; mean hypothesis length {mean_len:.1f} pieces; {args.rounds} rounds")
    print(f"  with KV cache     {statistics.median(with_cache):8.1f} sentences/s  ({', '.join(f'{x:.1f}' for x in with_cache)})")
    print(f"  full recompute    {statistics.median(without):8.1f} sentences/s  ({', '.join(f'{x:.1f}' for x in without)})")
    print(f"beam{args.beam}_cache_speedup={statistics.median(with_cache) / statistics.median(without):.3f}")


if __name__ == "__main__":
    main()
