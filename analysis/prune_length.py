"""How long must the constrained gates prune? One long head-budget run, and when its chosen heads stop changing.

``run`` trains one ``gates_budget`` trial of a sweep (its prune and fine-tuning recipe, ``distill`` included) from
the sweep's base model, but never fixes its heads (``gates.target_fix_at: 1``) and evaluates often, so that the
heads the budget would keep (the top-k of ``log_alpha``, recorded as ``kept`` in gates.jsonl at every evaluation)
can be watched for as long as the run goes. ``report`` reads such a run (or any head-budget run) and tells, per
evaluation, the kept heads, how many changed since the previous evaluation, the expected open heads against the
target, and validation BLEU; and the step from which the kept heads never changed again.

    python -m analysis.prune_length run sweeps/multi30k_en_de.yaml --base results/multi30k_base.pt --budget 3 \\
        --steps 2000 --eval-every 100 --out results/prune_length/enc3 [--set prune.set.distill.weight=0.5]
    python -m analysis.prune_length report results/prune_length/enc3 [--markdown PAGE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model import metrics as M
from model.train import GATES_FILE, METRICS_FILE


def settled_step(kept: list[tuple[int, set[int]]]) -> int | None:
    """The first evaluation step from which the kept set never changes again (None: no evaluations)."""
    if not kept:
        return None
    step = kept[-1][0]
    for (earlier, heads), (_, later) in zip(reversed(kept[:-1]), reversed(kept[1:]), strict=True):
        if heads != later:
            break
        step = earlier
    return step


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """Per evaluation: step, kept heads (one set over every budget group), heads changed since the previous
    evaluation, BLEU, expected and target open heads."""
    gates = [json.loads(line) for line in (run_dir / GATES_FILE).read_text().splitlines() if line.strip()]
    metrics = {m[M.STEP]: m for m in map(json.loads, (run_dir / METRICS_FILE).read_text().splitlines()) if m}
    rows, previous = [], None
    for record in gates:
        if "kept" not in record:
            raise SystemExit(f"{run_dir / GATES_FILE}: step {record[M.STEP]} has no `kept` heads: not a head-budget run")
        kept = {f"{group}:{i}" for group, heads in record["kept"].items() for i in heads}
        m = metrics.get(record[M.STEP], {})
        rows.append({M.STEP: record[M.STEP], "kept": kept,
                     "changed": None if previous is None else len(kept - previous),
                     M.BLEU: m.get(M.BLEU), M.EXPECTED_OPEN: m.get(M.EXPECTED_OPEN), M.TARGET_OPEN: m.get(M.TARGET_OPEN)})
        previous = kept
    return rows


def report(run_dir: Path) -> str:
    rows = read_run(run_dir)
    settled = settled_step([(r[M.STEP], r["kept"]) for r in rows])
    lines = [f"Head-budget run {run_dir}: {len(rows)} evaluations; the kept heads stopped changing at step "
             f"{settled} (of {rows[-1][M.STEP] if rows else 0}).", "",
             "| step | heads changed | expected open | target open | BLEU | kept (group:head) |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        fmt = (lambda v, d=2: "" if v is None else f"{v:.{d}f}")
        lines.append(f"| {r[M.STEP]} | {'' if r['changed'] is None else r['changed']} | {fmt(r[M.EXPECTED_OPEN])} | "
                     f"{fmt(r[M.TARGET_OPEN])} | {fmt(r[M.BLEU])} | {' '.join(sorted(r['kept']))} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> None:
    from model.config import save_config
    from model.train import train
    from sweeps.results import BUDGET, LAYOUT_SEED
    from sweeps.validate import load_sweep

    sweep = load_sweep(args.sweep, args.overrides, storage=str(Path(args.out).resolve().parent))
    cfg = sweep.gates_budget_config({BUDGET: args.budget, LAYOUT_SEED: args.seed})
    cfg.gates.target_fix_at = 1.0  # never fixed: the top-k is watched to the end
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.log_every = args.steps, args.eval_every, args.log_every
    cfg.train.threads, cfg.train.progress = args.threads, True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "prune_length.yaml")
    train(cfg, out / "run", resume=args.resume, init_from=None if args.resume else args.base, teacher=args.base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m analysis.prune_length", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one long head-budget trial of a sweep, its heads never fixed")
    r.add_argument("sweep")
    r.add_argument("--base", required=True, help="the sweep's base model checkpoint (also the teacher)")
    r.add_argument("--budget", type=int, required=True)
    r.add_argument("--seed", type=int, default=0, help="the budget point's seed (baseline.seed)")
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--log-every", type=int, default=25)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", required=True)
    r.add_argument("--resume", action="store_true")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sweep overrides, as the sweep command takes them")
    rep = sub.add_parser("report", help="when the kept heads of a head-budget run stopped changing")
    rep.add_argument("run_dir")
    rep.add_argument("--markdown", default=None, help="write the table to this file as well")
    args = p.parse_args(argv)
    if args.command == "run":
        run(args)
        return
    text = report(Path(args.run_dir))
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
