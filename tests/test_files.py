"""model/files.py: the one atomic write and the one inter-process lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from model.files import atomic_write, file_lock


def _hold(path: str, seconds: float, started) -> None:
    with file_lock(path):
        started.set()
        time.sleep(seconds)


def test_a_second_process_waits_for_the_lock_and_a_timeout_names_the_lock_file(tmp_path: Path):
    lock = tmp_path / "corpus.lock"
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(lock), 3.0, started))
    holder.start()
    try:
        assert started.wait(60)
        with pytest.raises(TimeoutError, match="corpus.lock"):
            with file_lock(lock, timeout=0.3):
                pass
        with pytest.raises(ValueError, match="another process has held this lock"):  # the caller's error type
            with file_lock(lock, timeout=0.2, error=ValueError):
                pass
        start = time.monotonic()
        with file_lock(lock, timeout=60):  # granted once the holder lets go
            waited = time.monotonic() - start
        assert waited > 1.0  # the holder keeps it 3 s; 0.5 s of them went to the refused attempts
    finally:
        holder.join(30)
    assert holder.exitcode == 0


def test_atomic_write_takes_text_or_bytes_and_leaves_no_temporary_file(tmp_path: Path):
    atomic_write(tmp_path / "a" / "b.txt", "héllo")
    atomic_write(tmp_path / "a" / "c.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "a" / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt", "c.bin"]
