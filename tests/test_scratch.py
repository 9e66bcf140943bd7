"""A trial's scratch folder (sweeps/scratch.py): removed when its trial ends, taken back when its trial was killed,
never touched while its trial lives or when it is not one of ours."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeps.scratch import LOCK, PREFIX, reclaim, trial_scratch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")


def _owner(root: Path, trial: str) -> tuple[subprocess.Popen, Path]:
    """A process that opens a scratch folder for ``trial`` under ``root``, writes a checkpoint-sized file into it and
    waits for a line on stdin before it leaves the block; its folder, once made."""
    code = textwrap.dedent(f"""
        import sys
        from sweeps.scratch import trial_scratch
        with trial_scratch({trial!r}, root={str(root)!r}) as folder:
            (folder / "step_00000100.pt").write_bytes(bytes(1 << 20))
            print(folder, flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().strip()
    assert line, f"the owner process wrote no folder (exit {proc.poll()})"
    return proc, Path(line)


def test_a_killed_trials_folder_is_taken_back_by_the_next_trial_and_each_trial_removes_its_own(tmp_path: Path) -> None:
    proc, killed = _owner(tmp_path, "aaaa_00000")
    assert killed.parent == tmp_path and killed.name.startswith(f"{PREFIX}aaaa_00000-")
    assert (killed / LOCK).is_file() and (killed / "step_00000100.pt").is_file()
    proc.send_signal(signal.SIGKILL)  # no finally block runs: the folder stays behind
    proc.wait(timeout=30)
    assert (killed / "step_00000100.pt").is_file()

    with trial_scratch("bbbb_00001", root=tmp_path) as mine:
        assert not killed.exists(), "the killed trial's folder was not taken back"
        assert mine.is_dir() and (mine / LOCK).is_file()
        (mine / "run").mkdir()
    assert not mine.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_live_trials_folder_is_left_alone_until_it_removes_it_itself(tmp_path: Path) -> None:
    proc, live = _owner(tmp_path, "cccc_00002")
    try:
        assert reclaim(tmp_path) == []
        with trial_scratch("dddd_00003", root=tmp_path) as mine:
            assert (live / "step_00000100.pt").is_file() and mine.is_dir()
        assert live.is_dir()
    finally:
        proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0
    assert not live.exists()


def test_folders_without_the_lock_file_are_never_touched(tmp_path: Path) -> None:
    legacy = tmp_path / f"{PREFIX}eeee_00004-legacy"  # a folder of a trial run before the lock, or someone else's
    legacy.mkdir()
    (legacy / "step_00000100.pt").write_bytes(b"x")
    setting_up = tmp_path / f"{PREFIX}ffff_00005-new"  # its owner has not renamed its lock into place yet
    setting_up.mkdir()
    (setting_up / f"{LOCK}.pending").write_bytes(b"")
    a_file = tmp_path / f"{PREFIX}tests.lock"  # a file of that prefix: the test session's own locks
    a_file.write_text("")
    unrelated = tmp_path / "other"
    unrelated.mkdir()
    (unrelated / LOCK).write_bytes(b"")

    assert reclaim(tmp_path) == []
    with trial_scratch("gggg_00006", root=tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [legacy.name, setting_up.name, a_file.name, unrelated.name])
    assert (legacy / "step_00000100.pt").read_bytes() == b"x"


def test_the_scratch_root_comes_from_the_environment_and_is_made(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "node-local" / "scratch"
    monkeypatch.setenv("HEADSWEEP_SCRATCH", str(root))
    with trial_scratch("hhhh_00007") as folder:
        assert folder.parent == root
    assert root.is_dir() and list(root.iterdir()) == []
