"""Faults injected into a single run (no Ray): a full disk while a checkpoint or a cache is written.

A full disk is a real one where the test may mount a small tmpfs (root on Linux), and a file size limit
(RLIMIT_FSIZE, enforced by the kernel) everywhere else; the sweep-level faults are in test_reliability.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.data import load_data
from model.train import train
from tests.helpers import QUIET, REPO, tiny_config


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs at tmp_path/disk, or a skip with the reason where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'mount failed'}); "
                    "the file-size-limit variant covers the same code")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until fewer than ``leave`` bytes are free; returns the filler file."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes(small_disk: Path, record):
    cfg = tiny_config("train.max_steps=3", "train.eval_every=3", f"data.cache_dir={small_disk.parent / 'cache'}")
    run = small_disk / "run"
    first = train(cfg, run, **QUIET)
    size = first.checkpoint.stat().st_size
    filler = fill(small_disk, size // 2)
    longer = tiny_config("train.max_steps=6", "train.eval_every=3", f"data.cache_dir={small_disk.parent / 'cache'}")
    with pytest.raises(CheckpointError, match=r"step_00000006.pt.*No space left on device.*intact"):
        train(longer, run, resume=True, **QUIET)
    left = checkpoint_names(run)
    assert left == ["step_00000003.pt"]  # no partial file, no temp file
    kept_step = load_checkpoint(run / "checkpoints" / "step_00000003.pt")["counters"]["step"]
    assert kept_step == 3
    filler.unlink()  # space freed: the run goes on from step 3, and nothing was lost
    done = train(longer, run, resume=True, **QUIET)
    unbroken = train(longer, small_disk.parent / "unbroken", **QUIET)
    timing = ("train_seconds", "tokens_per_s")
    equal = {k: v for k, v in done.metrics.items() if k not in timing} == {
        k: v for k, v in unbroken.metrics.items() if k not in timing}
    assert done.step == 6 and equal
    record("disk full (a 4 MiB tmpfs filled up) while a checkpoint is written; space freed, then resumed",
           checkpoints_loading=len(left), partial_files_left=sum(n != "step_00000003.pt" for n in left), steps_lost=first.step - kept_step,
           final_metrics_equal_unbroken=int(equal))


def test_a_full_disk_under_the_caches_is_reported_and_the_data_still_loads(small_disk: Path, tmp_path: Path, record):
    cfg = tiny_config(f"data.cache_dir={small_disk / 'cache'}").data
    fill(small_disk, 0)
    messages: list[str] = []
    data = load_data(cfg, "valid", log=messages.append)
    reference = load_data(tiny_config(f"data.cache_dir={tmp_path / 'roomy'}").data, "valid", **QUIET)
    warnings = [m for m in messages if m.startswith("warning: could not")]
    assert len(warnings) == 2 and all("No space left on device" in m for m in warnings), messages
    assert data.tokenizers.src.proto == reference.tokenizers.src.proto
    identical = [a.tolist() for a in data.splits["train"].src] == [a.tolist() for a in reference.splits["train"].src]
    assert identical
    leftovers = [p for p in (small_disk / "cache").rglob("*") if p.is_file()]
    assert leftovers == []  # no half-written model or id folder that a later run could pick up
    record("disk full under the sentencepiece and token-id caches", warnings=len(warnings), data_identical=int(identical),
           partial_files_left=len(leftovers))


LIMITED_WRITE = """
import resource, signal, sys
from model.checkpoint import CheckpointError
from model.train import train
from tests.helpers import tiny_config

run, limit = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    train(tiny_config("train.max_steps=6", "train.eval_every=3"), run, resume=True, log=lambda _: None)
except CheckpointError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_file_size_limit_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path, record):
    run = tmp_path / "run"
    first = train(tiny_config("train.max_steps=3", "train.eval_every=3"), run, **QUIET)
    before = first.checkpoint.read_bytes()
    proc = subprocess.run([sys.executable, "-c", LIMITED_WRITE, str(run), str(len(before) // 2)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "step_00000006.pt" in proc.stdout and "File too large" in proc.stdout and "intact" in proc.stdout
    intact = int(checkpoint_names(run) == ["step_00000003.pt"] and first.checkpoint.read_bytes() == before)
    assert intact
    status = json.loads((run / "status.json").read_text())
    assert status["step"] == 3  # the run's record still points at what is on disk
    assert train(tiny_config("train.max_steps=6", "train.eval_every=3"), run, resume=True, **QUIET).step == 6
    record("file size limit (RLIMIT_FSIZE: EFBIG) while a checkpoint is written, in a separate process",
           checkpoints_intact=intact, steps_lost=first.step - status["step"])


class _Checkpoint:
    """What CheckpointRetention needs of a Tune checkpoint: a folder on a pyarrow filesystem."""

    def __init__(self, path: Path) -> None:
        from pyarrow import fs

        path.mkdir(parents=True)
        self.path, self.filesystem = str(path), fs.LocalFileSystem()


class _Trial:
    trial_id = "t1"


def test_checkpoint_retention_deletes_an_old_checkpoint_only_after_two_state_saves(tmp_path: Path, monkeypatch, record):
    """Tune's state (saved every `period` s) may still point at the checkpoint before the newest: it is kept until a
    newer one has been known for two periods, then the trial keeps its newest `keep`."""
    from sweeps import retention

    clock = [0.0]
    monkeypatch.setattr(retention.time, "monotonic", lambda: clock[0])
    keeper = retention.CheckpointRetention(keep=1, period=10.0)
    folders = []
    for i in range(3):
        folders.append(_Checkpoint(tmp_path / f"checkpoint_{i:06d}"))
        keeper.on_checkpoint(i, [], _Trial(), folders[-1])
        clock[0] += 1.0
        keeper.on_step_end(i, [])
    early = sum(not Path(c.path).exists() for c in folders)
    assert early == 0  # within two state periods of their successors
    clock[0] = 1.0 + 25.5  # the second checkpoint has been known for 2 * 10 + 5 s: the first can go
    keeper.on_step_end(9, [])
    assert [Path(c.path).exists() for c in folders] == [False, True, True]
    clock[0] = 2.0 + 25.5
    keeper.on_step_end(10, [])
    assert [Path(c.path).exists() for c in folders] == [False, False, True]
    clock[0] = 1000.0
    keeper.on_step_end(11, [])
    assert Path(folders[-1].path).exists()  # the newest is never deleted
    record("old checkpoints deleted while Tune's saved state may still point at them (simulated clock)",
           checkpoints=len(folders), deleted_within_two_periods=early, kept_at_the_end=sum(
               Path(c.path).exists() for c in folders))


@pytest.mark.parametrize("argv, host", [([], "127.0.0.1"), (["--dashboard-host", "0.0.0.0"], "0.0.0.0")])
def test_the_local_dashboard_listens_on_loopback_unless_asked_otherwise(tmp_path: Path, monkeypatch, argv, host, record):
    import ray

    import trainable

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster of another test or user to join on this node
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {data: {synthetic: {train_size: 100}}}\nprune: {set: {gates.mode: learned}}\n"
                     "space: {gates.penalty: {loguniform: [0.01, 0.5]}}\nwandb: {mode: disabled}\n")
    assert trainable.main([str(sweep), "--results", str(tmp_path / "r"), "--dashboard", *argv]) == 2
    assert calls[0]["include_dashboard"] is True and calls[0]["dashboard_host"] == host
    record("local Ray dashboard: 127.0.0.1 unless --dashboard-host names another address",
           starts_listening_where_asked=sum(c["dashboard_host"] == host for c in calls))


def test_the_reliability_table_reports_each_case_of_a_test_and_counts_lost_trials(tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability", REPO / "bench" / "reliability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"test": "tests/a.py::test_x[one]", "what": "bad input", "refused": 1, "at_line": 4},
            {"test": "tests/a.py::test_x[two]", "what": "bad input", "refused": 1, "at_line": 3},
            {"test": "tests/b.py::test_y", "what": "kill", "trials_lost": 2, "final_step": 300},
            *({"test": f"tests/c.py::test_z[{i}]", "what": "random", "examples": 10 + i} for i in range(6))]
    text = bench.render(rows, 90.0)
    assert "| `a.py::test_x` | bad input | 2 | refused = 1 (each of 2), at line = 4 / 3 |" in text  # never 7
    assert "| `b.py::test_y` | kill | 1 | trials lost = 2, final step = 300 |" in text
    assert "| `c.py::test_z` | random | 6 | examples = 10 to 15 (cases: 6) |" in text
    assert "Trials lost across all rows: **2**" in text and "in 1.5 minutes (measured by that run)" in text
    figures = tmp_path / "figures.jsonl"
    figures.write_text("\n".join(json.dumps(r) for r in rows[:3])
                       + '\n{"session_seconds": 75.5, "outcomes": {"passed": 9, "skipped": 1}}\n')
    assert bench.read_figures(figures) == (rows[:3], 75.5)  # the run's own duration, not a typed-in one
    text = bench.render(rows[:3], 75.5, outcomes=bench.read_session(figures)["outcomes"])
    assert "in 1.3 minutes (measured by that run): 9 passed, 1 skipped." in text  # and its own count


def test_the_reliability_page_ends_with_what_its_generator_writes():
    """docs/reliability.md is rewritten by bench/reliability.py: prose edited in the page alone would be lost at
    the next run, so the page's findings must be the generator's own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability", REPO / "bench" / "reliability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    page = (REPO / "docs" / "reliability.md").read_text()
    assert page.startswith(bench.HEADER)
    for test, text in bench.FINDINGS:
        assert f"- {text} Checked by `{test.removeprefix('tests/')}` (its row above)." in page, test
    assert page.rstrip("\n").endswith(f"- Not covered here: {bench.NOT_COVERED}")


def test_every_reliability_finding_names_a_test_that_exists_and_records():
    """A finding on docs/reliability.md stands only with a test that fails if it comes back: each one names a test
    function that exists and records a row (a renamed or deleted test would leave the finding unguarded)."""
    import ast
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability", REPO / "bench" / "reliability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert len(bench.FINDINGS) >= 6
    for test in {t for t, _ in bench.FINDINGS}:
        file, _, name = test.partition("::")
        tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
        found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert found, f"{test}: no such test"
        assert "record" in {a.arg for a in found[0].args.args}, f"{test} records no row for the page"


def test_no_reliability_figure_is_written_down_as_a_constant():
    """docs/reliability.md is generated from record(...) calls: each figure must come from what the test counted.
    A number or true/false written into the call is a claim, not a measurement (a per-example record of 1, summed
    by the table, says so on its line with a `# literal-record:` comment)."""
    import ast

    found, calls = [], 0
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record":
                calls += 1
                for keyword in node.keywords:
                    value = keyword.value
                    if isinstance(value, ast.Constant) and isinstance(value.value, (int, float, bool)) \
                            and "# literal-record:" not in lines[value.lineno - 1]:
                        found.append(f"{path.name}:{value.lineno}: {keyword.arg}={value.value!r}")
    assert calls > 40, calls  # the scan saw the calls it is about
    assert not found, found


HELD_RUN = """
import sys
from model.train import train
from tests.helpers import tiny_config

train(tiny_config("train.max_steps=9", "train.eval_every=3"), sys.argv[1], resume=sys.argv[2] == "resume",
      log=lambda _: None)
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["partial", "before-rename"])
def test_a_kill_held_inside_a_checkpoint_write_loses_only_that_write(tmp_path: Path, point: str, record):
    """The checkpoint writer is held at a named point of the step-6 write (half the temporary file written, or
    the whole file synced but not renamed) and the process is killed there: the step-3 checkpoint is intact and
    the newest, resume removes the temporary file and ends where an unbroken run ends."""
    run = tmp_path / "run"
    log = tmp_path / "fault.log"
    env = {**os.environ, "HEADSWEEP_FAULT_AT": f"{point}:step_00000006.pt", "HEADSWEEP_FAULT_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(run), "fresh"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:] if proc.stdout else ""
        time.sleep(0.05)
    pid, where, target, tmp = log.read_text().split()
    os.kill(int(pid), signal.SIGKILL)
    proc.wait(timeout=60)
    held_there = int(where == point and target.endswith("step_00000006.pt") and int(pid) == proc.pid)
    assert held_there
    names = checkpoint_names(run)
    partial = [n for n in names if n.endswith(".tmp")]
    assert [n for n in names if n.endswith(".pt")] == ["step_00000003.pt"] and partial == [Path(tmp).name], names
    written = Path(tmp).stat().st_size
    assert load_checkpoint(run / "checkpoints" / "step_00000003.pt")["counters"]["step"] == 3
    env.pop("HEADSWEEP_FAULT_AT")
    resumed = subprocess.run([sys.executable, "-c", HELD_RUN, str(run), "resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    unbroken = train(tiny_config("train.max_steps=9", "train.eval_every=3"), tmp_path / "unbroken", **QUIET)
    after = checkpoint_names(run)
    same = torch.equal(*(load_checkpoint(p)["model"]["encoder.0.self_attn.qkv.weight"]
                         for p in (run / "checkpoints" / "step_00000009.pt", unbroken.checkpoint)))
    assert not [n for n in after if n.endswith(".tmp")] and same
    record(f"SIGKILL held inside a checkpoint write ({point}: "
           + ("half the temporary file written" if point == "partial" else "synced, not yet renamed") + ")",
           kills=len(log.read_text().splitlines()), landed_at_the_point=held_there,
           bytes_written_before_the_kill=written, checkpoints_loading_after=len([n for n in names if n.endswith(".pt")]),
           temp_files_after_resume=len([n for n in after if n.endswith(".tmp")]), resumed_equal_to_unbroken=int(same))


def test_a_fault_with_a_log_lands_once_and_a_process_reaching_it_again_goes_on(tmp_path: Path):
    """A retried trial worker writes the checkpoint it was killed writing again: the first process at the point
    is held (and logged), a later one is not."""
    log = tmp_path / "fault.log"
    env = {**os.environ, "HEADSWEEP_FAULT_AT": "partial:step_*.pt", "HEADSWEEP_FAULT_LOG": str(log)}
    reach = ("import sys; from pathlib import Path; from model.files import atomic_write; "
             "atomic_write(Path(sys.argv[1]), b'x' * 64)")
    first = subprocess.Popen([sys.executable, "-c", reach, str(tmp_path / "step_00000002.pt")], cwd=REPO, env=env)
    deadline = time.time() + 60
    while not (log.exists() and log.read_text().strip()):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    assert first.poll() is None  # held
    again = subprocess.run([sys.executable, "-c", reach, str(tmp_path / "step_00000002.pt")], cwd=REPO, env=env,
                           timeout=60, check=False)
    first.kill()
    first.wait(timeout=30)
    assert again.returncode == 0 and (tmp_path / "step_00000002.pt").read_bytes() == b"x" * 64
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [[str(first.pid), "partial"]]
