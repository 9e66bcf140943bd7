"""What a sweep costs on this machine before it runs: training-step times measured here, times the steps it plans.

Measures the seconds per optimizer step of the base model (its config, ``pretrain.resources`` threads) and of a
trial (the prune config: gates on, the ungated side frozen, ``resources`` threads), on real batches of the sweep's
corpus, after warm-up steps, from random weights (a step costs the same whatever the weights are). Then counts the
steps every stage of the sweep plans (base model, gate trials, gates_budget, fine-tuned baselines, scratch) and
prints core-hours per stage and the wall time at the sweep's concurrency. Evaluations and test-set decoding are
left out (they depend on what the models translate): the figures are a floor.

    python bench/sweep_cost.py sweeps/multi30k_en_de.yaml --data-dir ../shared/data [--steps 20] [--set KEY=VALUE]

Prints ``sweep_core_hours=X`` and ``sweep_wall_hours=Y`` as the last lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data import collate, make_batches  # noqa: E402
from model.train import Trainer  # noqa: E402
from sweeps.results import BUDGET  # noqa: E402
from sweeps.schema import LAYOUT_METHODS  # noqa: E402
from sweeps.validate import load_sweep  # noqa: E402


def seconds_per_step(cfg, steps: int, warmup: int, out: Path) -> float:
    """Median seconds of ``steps`` optimizer steps of ``cfg`` after ``warmup`` steps (torch threads from cfg)."""
    torch.set_num_threads(cfg.train.threads)
    trainer = Trainer(cfg, out, log=lambda _: None)
    train = trainer.data.splits["train"]
    d = cfg.data
    order = make_batches(train.src_lengths, train.tgt_lengths, d.max_tokens, d.batch_size, d.bucket_size,
                         cfg.train.seed, 0)
    times = []
    for i in range(warmup + steps):
        batch = [collate(train, order[i % len(order)])]
        start = time.perf_counter()
        trainer._train_step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/sweep_cost.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per config (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="results/bench/sweep_cost", help="scratch folder for the timed runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweep key, as the sweep command takes it (e.g. prune.set.train.precision=bf16)")
    args = parser.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    sweep = load_sweep(args.sweep, args.overrides, data_dir=data_dir, storage=str(Path(args.out).resolve()))
    out = Path(args.out)
    measured: dict[tuple, float] = {}

    def per_step(cfg, label: str) -> float:
        """Seconds per step of ``cfg``, measured once per (batch, threads, gates, frozen parts)."""
        key = (cfg.data.max_tokens, cfg.train.threads, cfg.gates.mode, tuple(cfg.train.freeze), cfg.train.precision)
        if key not in measured:
            measured[key] = seconds_per_step(cfg, args.steps, args.warmup, out / f"run{len(measured)}")
            print(f"{label}: {measured[key]:.3f} s/step ({cfg.data.max_tokens} tokens a batch, {cfg.train.threads} "
                  f"threads, gates {cfg.gates.mode}, frozen {list(cfg.train.freeze)}"
                  + (f", {cfg.train.precision}" if cfg.train.precision != "fp32" else "") + ")", flush=True)
        return measured[key]

    base_cfg = sweep.base_config()
    points = sweep.points_to_evaluate()
    trial_cfg = sweep.trial_config(points[0] if points else {})  # the first trial's batch size
    b, methods = sweep.schema.baselines, set(sweep.methods)
    grid = len(sweep.budgets()) * b.seeds
    # (stage, trials, steps each, config)
    stages = [("base model", 1, base_cfg.train.max_steps, base_cfg)]
    if "gates" in methods:
        stages.append(("gates (Optuna)", sweep.search.num_samples, trial_cfg.train.max_steps, trial_cfg))
    if "gates_budget" in methods:
        cfg = sweep.gates_budget_config({BUDGET: sweep.budgets()[0]})
        stages.append(("gates_budget", grid, cfg.train.max_steps, cfg))
    for method in sorted(methods & set(LAYOUT_METHODS)):
        for n in [n for n in b.finetune_steps if n]:
            stages.append((f"{method} + {n} steps", grid, n, sweep.baseline_config(n, {BUDGET: sweep.budgets()[0]})))
    if "scratch" in methods:
        layouts = (b.scratch_limit if b.scratch_limit is not None else sweep.search.num_samples) + b.scratch_full
        cfg = sweep.scratch_config({})
        stages.append((f"scratch (up to {layouts} layouts)", layouts * b.scratch_seeds, cfg.train.max_steps, cfg))
    stages = [(name, trials, steps, cfg.train.threads, per_step(cfg, name)) for name, trials, steps, cfg in stages]
    cores = sweep.resources.cpus * sweep.search.max_concurrent
    total_core_h = total_wall_h = 0.0
    print(f"\n{'stage':32} {'trials':>6} {'steps':>6} {'core-h':>8} {'wall-h':>7}")
    for name, trials, steps, threads, per_step in stages:
        core_h = trials * steps * per_step * threads / 3600
        at_once = 1 if name == "base model" else max(1, int(cores // threads))  # scratch: on its resources
        wall_h = trials * steps * per_step / 3600 / min(at_once, trials)
        total_core_h, total_wall_h = total_core_h + core_h, total_wall_h + wall_h
        print(f"{name:32} {trials:>6} {steps:>6} {core_h:>8.2f} {wall_h:>7.2f}")
    print(f"{'all (training steps only)':32} {'':>6} {'':>6} {total_core_h:>8.2f} {total_wall_h:>7.2f}")
    print(f"sweep_core_hours={total_core_h:.2f}")
    print(f"sweep_wall_hours={total_wall_h:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
