"""Run every fault-injection and bad-input test and write the table of docs/reliability.md from what they measured.

    python bench/reliability.py [--out docs/reliability.md] [-- PYTEST ARGS]
    HEADSWEEP_RELIABILITY_OUT=figures.jsonl python -m pytest -q          # or: the figures of any test run,
    python bench/reliability.py --figures figures.jsonl                   # rendered without running again

Each test in the list below calls the ``record`` fixture (tests/conftest.py) with what it injected and what it
counted (trials lost, evaluations redone, inputs refused, ...); this script points $HEADSWEEP_RELIABILITY_OUT at a
temporary file, runs pytest on those tests, and renders one table row per test function, in test-id order (a
parametrized test's figures per case, or their range; never a sum). A failing test fails the script and leaves the
document untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SESSION_KEY = "session_seconds"  # the line tests/conftest.py appends when the test run ends: how long it took
TESTS = ["tests/test_reliability.py", "tests/test_faults.py", "tests/test_trainable.py::"
         "test_a_killed_trial_worker_is_retried_from_its_last_checkpoint", "tests/test_trainable.py::"
         "test_diverged_trial_ends_as_such_and_the_sweep_goes_on", "tests/test_trainable.py::"
         "test_resume_refuses_a_damaged_tune_state_and_a_damaged_or_locked_study_and_changes_nothing",
         "tests/test_storage.py::test_a_sweep_on_s3_interrupted_and_resumed_by_a_driver_with_an_empty_disk",
         "tests/test_storage.py::test_storage_requests_wait_out_an_s3_server_that_goes_away_and_comes_back",
         "tests/test_storage.py::test_a_sweep_rides_out_the_s3_server_going_away_mid_sweep",
         "tests/test_checkpoint.py", "tests/test_sweep.py", "tests/test_config.py", "tests/test_corpora.py",
         "tests/test_properties.py", "tests/test_train.py", "tests/test_wandb_log.py"]

HEADER = """# Reliability: faults injected, bad inputs refused

Every row is a test that injects the fault or feeds the bad input for real (tiny models, CPU) and asserts that
nothing is lost; the figures are what the tests counted in the run below. Rerun them all and rewrite this table:

```bash
python bench/reliability.py            # only the tests that record figures
```

The tests also run in the README's test command; this script only collects their figures.

"""


# What the tests found: each finding with the test that fails if it comes back (its row above has what it
# counted in the run that wrote the page; tests/test_faults.py checks that every test named here exists)
FINDINGS = [
    ('tests/test_faults.py::test_checkpoint_retention_deletes_an_old_checkpoint_only_after_two_state_saves',
     '**Tune can lose a trial to a killed driver.** With `CheckpointConfig(num_to_keep=K)`, Tune deletes a '
     "trial's older checkpoint as soon as a newer one is registered, but saves the experiment state that "
     '`Tuner.restore` reads only every few seconds. A driver killed in between leaves a state that names a '
     'deleted checkpoint, and the trial ends in ERROR on resume ("Could not recover from checkpoint as it '
     'does not exist"). The project therefore keeps every checkpoint in Tune and deletes old ones itself '
     '(`sweeps/retention.py`): during a run only once a newer checkpoint has been known for two state-saving '
     'periods (`TUNE_GLOBAL_CHECKPOINT_S`, fixed at 10 s unless set), and after `fit` returns only those '
     'before the one Tune recorded last.'),
    ('tests/test_reliability.py::test_driver_interrupted_at_every_stage_then_resumed_loses_nothing',
     '`--resume` after an interruption during pretraining was refused ("there is no sweep to resume") '
     "although the base model's training was there to continue; it now continues it."),
    ('tests/test_properties.py::test_any_bytes_as_a_config_file_are_accepted_or_a_config_error',
     "A control character or a non-UTF-8 byte in a config escaped as yaml's own `ReaderError` (found by the "
     'property tests); it is a `ConfigError` with the line now.'),
    ('tests/test_faults.py::test_a_kill_held_inside_a_checkpoint_write_loses_only_that_write',
     "**An evaluation is reported twice only when a worker or the driver dies between its report and Tune's "
     'save.** (The driver: with local storage Ray appends the report to `progress.csv` at once, and the '
     'interrupted-driver test once killed the driver before the state save that followed it; the resumed '
     'trial evaluated step 300 again. The test asserts that such a repeat is the same evaluation, bit for '
     'bit; the kill held inside a checkpoint write, test_faults.py, makes the redone steps happen every time '
     "and checks them against an unbroken run.) Tune writes a trial's `progress.csv` on the driver and copies"
     ' it to the storage together with the experiment state, so a trial resumed from the checkpoint that '
     'state names (after a killed driver, worker or node) goes on from the evaluation after it. But Tune '
     "registers a function trainable's checkpoint in a second step (a `save` call on the worker) after it has"
     ' logged the result: a worker killed in that gap (CI met it once, killing a worker as soon as its first '
     'checkpoint folder appeared) is retried from the checkpoint before, and its evaluations since are '
     "reported again (here step 100 twice: `[100, 100, 200, 300]`). That is Ray's and harmless for the "
     "results (the trials table keeps a trial's last row); the killed-worker row therefore kills the worker "
     'held inside its next checkpoint write, which it reaches only once Tune has registered the last one, and'
     ' asserts every evaluation once. That the resumed training is the same training is checked against the '
     'same sweep run unbroken (the final loss, BLEU, chrF, NLL, open heads and L0 equal bit for bit).'),
    ('tests/test_reliability.py::test_a_resume_whose_searcher_state_is_older_than_tunes_finishes_every_trial',
     '**A resume could stop for good on a trial the Optuna searcher did not know.** Tune copies its '
     "experiment state, the search wrappers' state and the Optuna searcher's pickle to the results folder one"
     ' file after another; a driver killed in between (the interrupted-driver test met it once, killing right'
     ' after a state save) leaves a state that names a trial the saved searcher never suggested. When that '
     'trial finished, OptunaSearch raised `KeyError` and the driver stopped, on that resume and on every '
     'later one. The trial is now told to the study (its RUNNING record, written live, or a new one from its '
     'config and result); the row above that puts an older searcher pickle back fails with the `KeyError` '
     'without this.'),
    ('tests/test_storage.py::test_a_sweep_rides_out_the_s3_server_going_away_mid_sweep',
     "**A storage outage failed trials within seconds.** With `s3://` results, a trial's `tune.report` "
     "reaches the storage at once (Ray checks the trial folder, then uploads the checkpoint), and pyarrow's "
     'S3 filesystem gives up after three quick attempts; Ray also pickles that filesystem to the trials '
     'without its retry settings. Every filesystem of a results URI now retries for '
     '`HEADSWEEP_STORAGE_RETRY_S` seconds (default 600), pickled ones too '
     '(`sweeps.storage.PatientS3FileSystem`); with the setting at 0 the 20-second outage above fails the '
     'sweep.'),
]
NOT_COVERED = ('a real multi-machine cluster (the two-node cluster runs on one machine, on loopback), cloud '
               "storage other than an S3-compatible server on loopback (moto's; a real bucket's latency and "
               'consistency are not exercised), GPUs, and an HTTP-level W&B failure at sweep scale (the unit '
               'test covers a failing backend inside a trial; the sweep test covers a refused connection).')


def footer(groups: dict[str, dict]) -> str:
    """The findings, each with the test that guards it and whether that test recorded in this run."""
    lines = ["", "## What the tests found, and what they do not cover", ""]
    for test, text in FINDINGS:
        ran = "its row above" if test in groups else "it recorded no row in this run"
        lines.append(f"- {text} Checked by `{test.removeprefix('tests/')}` ({ran}).")
    return "\n".join([*lines, f"- Not covered here: {NOT_COVERED}", ""])


def function_of(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def _per_case(values: list[float]) -> str:
    """A figure of a parametrized test: its one value, the value every case had, each case's, or their range."""
    if len(set(values)) == 1:
        return f"{values[0]:g}" + (f" (each of {len(values)})" if len(values) > 1 else "")
    if len(values) <= 4:
        return " / ".join(f"{v:g}" for v in values)
    return f"{min(values):g} to {max(values):g} (cases: {len(values)})"


def render(rows: list[dict], seconds: float, how: str = "`python bench/reliability.py`",
           outcomes: dict[str, int] | None = None) -> str:
    """The page: one table row per test function, each figure per case (never summed across cases), the trials
    lost summed over everything, and how long the run that recorded them took."""
    groups: OrderedDict[str, dict] = OrderedDict()
    # rows in test-id order, cases in parameter order: two test processes record them in no fixed order
    for row in sorted(rows, key=lambda r: (function_of(r["test"]), r["test"])):
        key = function_of(row["test"])
        group = groups.setdefault(key, {"what": row["what"], "cases": 0, "figures": OrderedDict()})
        group["cases"] += 1
        for name, value in row.items():
            if name in ("test", "what"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                group["figures"].setdefault(name, []).append(value)
            else:
                group["figures"].setdefault(name, value)
    lines = [HEADER,
             "| test | injected / fed | cases | what happened (counted) |", "| --- | --- | ---: | --- |"]
    for key, group in groups.items():
        file, _, name = key.partition("::")
        figures = ", ".join(f"{k.replace('_', ' ')} = {_per_case(v)}" if isinstance(v, list) else f"{k}: {v}"
                            for k, v in group["figures"].items())
        lines.append(f"| `{Path(file).name}::{name}` | {group['what']} | {group['cases']} | {figures} |")
    lost = sum(sum(g["figures"].get("trials_lost", [])) for g in groups.values())
    lines += ["", f"Trials lost across all rows: **{lost:g}**. Figures recorded by {how} in "
              f"{seconds / 60:.1f} minutes (measured by that run)" + (
                  ": " + ", ".join(f"{n} {k}" for k, n in sorted((outcomes or {}).items())) if outcomes else "")
              + ".", footer(groups)]
    return "\n".join(lines) + "\n"


def read_figures(path: Path) -> tuple[list[dict], float | None]:
    """The rows a test run recorded and how long that run took (the line its end wrote; None if it did not end)."""
    rows, seconds = [], None
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if SESSION_KEY in entry:
            seconds = entry[SESSION_KEY]
        else:
            rows.append(entry)
    return rows, seconds


def read_session(path: Path) -> dict:
    """The line the test run's end wrote: its seconds and its outcomes (passed, skipped, ...); {} if none."""
    found = [json.loads(line) for line in path.read_text().splitlines() if SESSION_KEY in line]
    return found[-1] if found else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    parser.add_argument("--figures", help="render the figures file of a test run made with "
                        "HEADSWEEP_RELIABILITY_OUT=FILE instead of running the tests")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    if args.figures:
        rows, seconds = read_figures(Path(args.figures))
        missing = sorted({t for t in TESTS if "::" in t} - {function_of(r["test"]) for r in rows})
        if missing or seconds is None:
            raise SystemExit(f"{args.figures}: " + (f"no figures from {', '.join(missing)}" if missing
                             else "the run that wrote it did not finish (no session time at its end)"))
        Path(args.out).write_text(render(rows, seconds, how="the README's test command",
                                         outcomes=read_session(Path(args.figures)).get("outcomes")))
        print(f"wrote {args.out}: {len({function_of(r['test']) for r in rows})} rows")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "HEADSWEEP_RELIABILITY_OUT": str(log)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS, *args.pytest_args], cwd=REPO, env=env,
                              check=False)
        if proc.returncode != 0:
            print("some tests failed: docs/reliability.md is left as it was", file=sys.stderr)
            return proc.returncode
        rows, seconds = read_figures(log) if log.exists() else ([], 0.0)
        outcomes = read_session(log).get("outcomes") if log.exists() else None
    Path(args.out).write_text(render(rows, seconds or 0.0, outcomes=outcomes))
    print(f"wrote {args.out}: {len({function_of(r['test']) for r in rows})} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
