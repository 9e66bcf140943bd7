"""How the driver's cost grows with the number of trials: sweeps of 10, 100 and 500 tiny trials, measured.

Each size is one sweep of the same tiny trial (the test suite's model on the synthetic pair, gates learned from
random initialisation, ``--steps`` steps, one evaluation), ``--concurrent`` at once, in its own driver process. Per
size it prints: the driver's wall time per trial beyond the trials' own (wall - sum of trial times / concurrency,
over trials), the time Optuna's sampler takes per suggestion at that many trials (the sweep's sampler replayed on
its finished trials: ``ask`` timed for the last 10), the driver's peak memory (its max RSS), the results folder's and
optuna.db's size, and how long ``analysis.report`` takes on the folder. Ratios are per trial against the smallest
size of the same run: a ratio above 1 is growth faster than linear.

    python bench/sweep_scale.py [--sizes 10 100 500] [--steps 20] [--concurrent 2] [--out results/bench/scale]

Prints ``overhead_per_trial_ratio_<N>=X`` and ``report_seconds_per_trial_ratio_<N>=Y`` lines last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TINY = {  # the test suite's tiny model (tests/conftest.py)
    "model": {"d_model": 32, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 64, "max_positions": 128},
    "data": {"synthetic": {"train_size": 400, "valid_size": 20, "test_size": 20}, "vocab_size": 120,
             "max_tokens": 256, "max_len": 64},
    "train": {"lr": 3.0e-3, "warmup_steps": 2, "max_steps": 20, "eval_every": 20},
    "eval": {"max_sentences": 20, "batch_size": 20, "samples": 1},
}


def sweep_file(folder: Path, trials: int, steps: int, concurrent: int) -> Path:
    raw = {"name": f"scale-{trials}", "base": TINY, "pretrain": {"enabled": False},
           "prune": {"set": {"gates.mode": "learned", "train.max_steps": steps, "train.eval_every": steps}},
           "space": {"gates.penalty": {"loguniform": [0.01, 0.5]}, "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                     "data.max_tokens": {"choice": [128, 256]}},
           "search": {"num_samples": trials, "max_concurrent": concurrent, "seed": 0},
           "resources": {"cpus": 1}, "keep_checkpoints": 1, "wandb": {"mode": "disabled"}}
    path = folder / f"scale-{trials}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def high_water_kib(pid: int) -> int:
    """A live process's peak resident set (VmHWM, KiB) so far; 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sampler_seconds(study_file: Path, name: str, last: int = 10) -> float:
    """Mean seconds of TPE's ``ask`` over the last ``last`` of the study's trials, replayed into a fresh study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [t for t in optuna.load_study(study_name=name, storage=f"sqlite:///{study_file}").trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=0))
    times = []
    for i, trial in enumerate(done):
        start = time.perf_counter()
        asked = study.ask(trial.distributions)
        if i >= len(done) - last:
            times.append(time.perf_counter() - start)
        study.tell(asked, trial.values)
    return sum(times) / max(1, len(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/sweep_scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--out", default="results/bench/scale")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DEDUP_LOGS": "0"}
    rows = []
    for n in sorted(args.sizes):
        path = sweep_file(out, n, args.steps, args.concurrent)
        experiment = out / f"scale-{n}"
        if experiment.exists():
            raise SystemExit(f"{experiment} exists: remove it (or give another --out) to measure afresh")
        start = time.perf_counter()
        with open(out / f"scale-{n}.log", "w", encoding="utf-8") as output:
            proc = subprocess.Popen([sys.executable, str(REPO / "trainable.py"), str(path), "--results", str(out)],
                                    cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
            peak_kib, shown = 0, time.perf_counter()
            print(f"{n} trials: running (driver output in {output.name})", flush=True)
            while proc.poll() is None:  # the driver's own peak resident memory (Ray's processes are not counted)
                peak_kib = max(peak_kib, high_water_kib(proc.pid))
                time.sleep(0.5)
                if time.perf_counter() - shown > 60:
                    shown = time.perf_counter()
                    started = len(list(experiment.glob("prune_trainable_*")))
                    print(f"  {started}/{n} trials started, {shown - start:.0f} s", flush=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print((out / f"scale-{n}.log").read_text()[-6000:], file=sys.stderr)
            return 1
        import pandas as pd

        table = pd.read_csv(experiment / "trials.csv")
        prune = table[table["stage"] == "prune"]
        own = prune["wall_seconds"].sum() / args.concurrent
        start = time.perf_counter()
        report = subprocess.run([sys.executable, "-m", "analysis.report", str(experiment)], cwd=REPO, env=env,
                                capture_output=True, text=True, check=False)
        report_s = time.perf_counter() - start
        rows.append({"trials": n, "completed": int((prune["status"] == "completed").sum()), "wall_s": wall,
                     "overhead_per_trial_s": (wall - own) / n,
                     "sampler_ms_per_suggestion": 1000 * sampler_seconds(experiment / "optuna.db", f"scale-{n}"),
                     "driver_peak_mib": peak_kib / 1024, "results_mib": folder_bytes(experiment) / 2**20,
                     "optuna_db_mib": (experiment / "optuna.db").stat().st_size / 2**20,
                     "report_s": report_s if report.returncode == 0 else float("nan")})
        print(json.dumps(rows[-1]), flush=True)
    first = rows[0]
    print(f"\n{'trials':>6} {'wall s':>8} {'overhead s/trial':>17} {'sampler ms':>11} {'driver MiB':>11} "
          f"{'results MiB':>12} {'optuna.db MiB':>14} {'report s':>9}")
    for r in rows:
        print(f"{r['trials']:>6} {r['wall_s']:>8.0f} {r['overhead_per_trial_s']:>17.2f} "
              f"{r['sampler_ms_per_suggestion']:>11.1f} {r['driver_peak_mib']:>11.0f} {r['results_mib']:>12.1f} "
              f"{r['optuna_db_mib']:>14.2f} {r['report_s']:>9.1f}")
    for r in rows[1:]:
        print(f"overhead_per_trial_ratio_{r['trials']}={r['overhead_per_trial_s'] / first['overhead_per_trial_s']:.2f}")
        print(f"report_seconds_per_trial_ratio_{r['trials']}="
              f"{(r['report_s'] / r['trials']) / (first['report_s'] / first['trials']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
