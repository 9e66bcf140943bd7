"""What Ray Tune + Optuna cost on top of the training itself, on the quickstart sweep.

    python bench/sweep_overhead.py [--sweep sweeps/quickstart.yaml] [--set key=value ...] [--baseline key=value]
                                   [--keep DIR]

Runs the sweep from scratch (fresh results folder and tokenizer cache, as a user's first run) and prints:
- total wall time of the command (target <= 10 minutes on a 2-core CPU);
- ideal time = the base model's trial time + (sum of prune trial times) / max_concurrent, where a trial's time is
  Tune's ``time_total_s`` (its whole function: data, model, training, evaluation, checkpoints);
- where a prune trial's time goes: its optimizer steps (``train_seconds`` of its last report) against the rest of
  its function (start-up, evaluations, checkpoints, W&B), the mean over the trials;
- where the time outside the trials goes, from the trials' own timestamps (Tune's result.json, 1 s resolution):
  before the base model's trial starts (imports, Ray's start-up, the driver's checks), between the base model and
  the first prune trial, the slots left idle between prune trials (worker start-up, scheduling) and after the last
  trial (the trials table, the report, Ray's shutdown);
- peak RSS of one trial's worker process (its VmHWM, read every 0.2 s) (target <= 2 GiB);
- with ``--baseline KEY=VALUE`` the sweep runs first with those overrides as well (e.g.
  ``search.scheduler.kind=none`` beside ``--set search.scheduler.kind=mo_asha``) and ``speedup_vs_baseline=`` is
  that run's wall time over the measured one's;
- ``quickstart_wall_s=``, the measured run's wall time (goal <= 300 s for the quickstart on an idle 2-core CPU);
- last, ``sweep_overhead = total wall time / ideal`` (target <= 1.10; goal <= 1.05): Ray start-up, scheduling,
  checkpoint copies, Optuna and the driver, as a share of the time the trials themselves take.
With ``--keep DIR`` the measured run's own output (``DIR/output.txt``, what a user's terminal shows) and its report
folder (``DIR/report``) are kept; the results folder is otherwise removed with the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sweeps.results import read_jsonl  # noqa: E402


def watch_workers(stop: threading.Event, peaks: dict[int, tuple[str, int]]) -> None:
    """Record the peak resident set (VmHWM, Linux /proc) of every Ray worker process that runs a trial."""
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                if not title.startswith("ray::") or not ("ImplicitFunc" in title or "trainable" in title):
                    continue
                status = (proc / "status").read_text()
            except OSError:
                continue
            hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            peaks[int(proc.name)] = (title, max(hwm, peaks.get(int(proc.name), ("", 0))[1]))
        time.sleep(0.2)


def trial_times(trial_path: Path) -> tuple[float, float, float]:
    """From Tune's result.json: when a trial's function started and when it last reported (epoch seconds), and the
    seconds it spent in optimizer steps (``train_seconds`` of its last report)."""
    records = read_jsonl(trial_path / "result.json")
    if not records:
        return float("nan"), float("nan"), float("nan")
    first, last = records[0], records[-1]
    return first["timestamp"] - first["time_this_iter_s"], float(last["timestamp"]), float(last["train_seconds"])


def outside(spans: dict[str, list[tuple[float, float]]], start: float, end: float,
            concurrency: int) -> dict[str, float]:
    """The wall time outside the trials, in four parts: before the base model, base to first prune trial, the prune
    slots left idle (as wall seconds: idle slot-seconds over the concurrency), after the last trial."""
    base, prune = spans["pretrain"], sorted(spans["prune"])
    first = min((s for s, _ in base + prune), default=start)
    base_end = max((e for _, e in base), default=first)
    prune_start, prune_end = prune[0][0], max(e for _, e in prune)
    busy = sum(e - s for s, e in prune)
    return {"before": first - start, "base_to_prune": max(0.0, prune_start - base_end),
            "idle_slots": max(0.0, (prune_end - prune_start) * concurrency - busy) / concurrency,
            "after": end - max(prune_end, base_end)}


def run_sweep(sweep: str, overrides: list[str], keep: Path | None = None) -> dict | int:
    """The sweep from scratch in a fresh results folder and tokenizer cache: its figures, or the command's exit code;
    ``keep``: a folder for the command's output and the sweep's report."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        env = {**os.environ, "HEADSWEEP_CACHE": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        cmd = [sys.executable, str(REPO / "trainable.py"), sweep, "--results", str(Path(tmp) / "results")]
        cmd += [f"--set={o}" for o in overrides]
        stop, peaks = threading.Event(), {}
        watcher = threading.Thread(target=watch_workers, args=(stop, peaks), daemon=True)
        watcher.start()
        start, epoch = time.perf_counter(), time.time()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        stop.set()
        watcher.join()
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            return proc.returncode
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "output.txt").write_text(proc.stdout + proc.stderr)
            for report in (Path(tmp) / "results").glob("*/report"):
                shutil.copytree(report, keep / "report", dirs_exist_ok=True)
        tables = list((Path(tmp) / "results").glob("*/trials.csv"))
        df = pd.read_csv(tables[0])
        df["start"], df["end"], df["train_seconds"] = zip(*(trial_times(Path(p)) for p in df["trial_path"]))
        spans = {stage: list(zip(df[df["stage"] == stage]["start"], df[df["stage"] == stage]["end"]))
                 for stage in ("pretrain", "prune")}
    concurrency = yaml.safe_load(Path(sweep).read_text())["search"]["max_concurrent"]
    prune = df[df["stage"] == "prune"]
    base = df[df["stage"] == "pretrain"]["wall_seconds"].sum()
    return {"wall": wall, "base": base, "prune": prune, "concurrency": concurrency,
            "ideal": base + prune["wall_seconds"].sum() / concurrency,
            "outside": outside(spans, epoch, epoch + wall, concurrency),
            "peak": max((rss for _, rss in peaks.values()), default=0), "workers": len(peaks)}


def describe(run: dict) -> None:
    prune, steps = run["prune"], run["prune"]["train_seconds"].mean()
    print(f"trials: {len(prune)} prune ({(prune['status'] == 'completed').sum()} completed), {run['concurrency']} at "
          f"once; base model trial {run['base']:.1f} s")
    print(f"sum of prune trial times: {prune['wall_seconds'].sum():.1f} s")
    mean = prune["wall_seconds"].mean()
    print(f"mean prune trial: {mean:.1f} s, of which optimizer steps {steps:.1f} s and the rest "
          f"(start-up, evaluations, checkpoints, W&B) {mean - steps:.1f} s")
    print(f"total wall time: {run['wall']:.1f} s ({run['wall'] / 60:.2f} min; target <= 10 min)")
    print(f"ideal (base + sum / concurrency): {run['ideal']:.1f} s")
    out = run["outside"]
    print(f"outside the trials: {out['before']:.0f} s before the base model, {out['base_to_prune']:.0f} s from it to "
          f"the first prune trial, {out['idle_slots']:.0f} s of idle slots between prune trials, {out['after']:.0f} s "
          f"after the last trial (1 s resolution)")
    print(f"peak RSS of a trial worker: {run['peak'] / 2**20:.0f} MiB over {run['workers']} worker processes "
          f"(target <= 2048)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="first run the sweep with these overrides too (e.g. search.scheduler.kind=none) and print "
                             "the wall-time ratio of that run to the measured one")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the measured run's output (DIR/output.txt) and report (DIR/report)")
    args = parser.parse_args()
    baseline = None
    if args.baseline:
        print(f"== baseline: {' '.join(args.overrides + args.baseline)}")
        baseline = run_sweep(args.sweep, args.overrides + args.baseline)
        if isinstance(baseline, int):
            return baseline
        describe(baseline)
        print(f"== measured: {' '.join(args.overrides) or 'the sweep as it is'}")
    run = run_sweep(args.sweep, args.overrides, args.keep)
    if isinstance(run, int):
        return run
    describe(run)
    if baseline is not None:
        print(f"speedup_vs_baseline={baseline['wall'] / run['wall']:.3f}")
    print(f"quickstart_wall_s={run['wall']:.0f}")
    print(f"sweep_overhead={run['wall'] / run['ideal']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
