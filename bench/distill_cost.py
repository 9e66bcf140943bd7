"""Step time of pruning with distillation (``distill``) against the same step without a teacher, in the same run.

The model is the shipped Multi30k sweep's (d_model 256, 8 heads, 3+3 layers, feed-forward 1024), its encoder
self-attention gated and its decoder frozen as the sweep's trials have it, on synthetic-pair batches of 2,048
tokens, one thread (a trial's core). Three optimizer steps are timed the same way: without a teacher, with logit
distillation (weight 0.5, T 2), and with logit and layer-wise distillation; the three alternate over several rounds
and each round's median step is kept, then the median round.

Prints ``distill_step_ratio=X`` (step time with logit distillation ÷ without a teacher) and
``distill_hidden_step_ratio=Y`` (with layer-wise distillation as well) as the last lines.

    python bench/distill_cost.py [--rounds 5] [--steps 6] [--threads 1]
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

from model.config import apply_overrides, config_from_dict  # noqa: E402
from model.data import collate, make_batches  # noqa: E402
from model.train import Trainer, train  # noqa: E402

MODEL = {"d_model": 256, "n_heads": 8, "encoder_layers": 3, "decoder_layers": 3, "d_ff": 1024}


def config(threads: int, *overrides: str):
    raw = {"model": MODEL, "data": {"synthetic": {"train_size": 4000, "valid_size": 20}, "vocab_size": 1000,
                                    "max_tokens": 2048},
           "train": {"max_steps": 10_000, "eval_every": 10_000, "progress": False, "threads": threads,
                     "freeze": ["decoder"]},
           "gates": {"mode": "learned", "attention": ["enc_self"], "penalty": 0.05},
           "eval": {"max_sentences": 8, "samples": 0}}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="steps timed per model and round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    quiet = dict(log=lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:
        base = train(config(args.threads, "gates.mode=none", "gates.penalty=0.0", "train.freeze=[]",
                            "train.max_steps=1", "train.eval_every=1"), Path(tmp) / "base", **quiet).checkpoint
        setups = {
            "no teacher": (),
            "logit distillation": ("distill.weight=0.5", "distill.temperature=2.0"),
            "logit + layer-wise": ("distill.weight=0.5", "distill.temperature=2.0", "distill.hidden_weight=1.0"),
        }
        trainers = {name: Trainer(config(args.threads, *o), Path(tmp) / str(i), init_from=base, teacher=base, **quiet)
                    for i, (name, o) in enumerate(setups.items())}
        split = next(iter(trainers.values())).data.splits["train"]
        batches = make_batches(split.src_lengths, split.tgt_lengths, 2048, None, 100, 1, 0)[: args.steps]
        batches = [collate(split, idx) for idx in batches]
        for trainer in trainers.values():  # warm-up: allocator, first-call costs
            trainer.model.train()
            trainer._train_step(batches[:1])
        rounds: dict[str, list[float]] = {name: [] for name in trainers}
        for r in range(args.rounds):
            for name, trainer in trainers.items():
                times = []
                for batch in batches:
                    start = time.perf_counter()
                    trainer._train_step([batch])
                    times.append(time.perf_counter() - start)
                rounds[name].append(statistics.median(times))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rounds[n][-1] * 1000:.0f} ms" for n in trainers), flush=True)
    step = {name: statistics.median(v) for name, v in rounds.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(batches)} batches of <= 2048 tokens, "
          f"median of {args.rounds} rounds")
    for name, seconds in step.items():
        print(f"{name:20s} {seconds * 1000:7.0f} ms/step")
    print(f"distill_step_ratio={step['logit distillation'] / step['no teacher']:.3f}")
    print(f"distill_hidden_step_ratio={step['logit + layer-wise'] / step['no teacher']:.3f}")


if __name__ == "__main__":
    main()
