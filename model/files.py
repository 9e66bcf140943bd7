"""Writing files safely: atomic replacement and an inter-process lock (one helper each, used everywhere)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

LOCK_TIMEOUT_S = 3600.0  # a download of the largest corpus on a slow link fits well inside
# Fault injection for the tests (docs/reliability.md): HEADSWEEP_FAULT_AT="<point>:<file name pattern>" holds the
# process at that point of atomic_write for a file whose name matches, after announcing it in the file named by
# HEADSWEEP_FAULT_LOG, so that a test's kill lands exactly there. Points: "partial" (half the temporary file
# written and flushed), "before-rename" (the temporary file complete and synced, not yet renamed), "commit" (a
# finished trial's row written into the Optuna study's SQLite file, not yet committed: sweeps.study). With a log, a
# fault lands once: a process that reaches the point after one was held there (a retried trial worker writing the
# same checkpoint again) goes on. Unset: no-op.
FAULT_POINTS = ("partial", "before-rename", "commit")


def cache_root(folder: str | Path | None = None) -> Path:
    """Where headsweep caches tokenizers, token ids, corpora and local copies of remote results: ``folder`` (a run
    config's ``data.cache_dir``), else ``$HEADSWEEP_CACHE``, else ~/.cache/headsweep; absolute."""
    root = folder or os.environ.get("HEADSWEEP_CACHE") or Path.home() / ".cache" / "headsweep"
    return Path(root).expanduser().resolve()


def fault_point(point: str, path: Path, detail: str = "") -> None:
    """Hold the process at ``point`` for a file named like ``path`` when $HEADSWEEP_FAULT_AT asks for it."""
    spec = os.environ.get("HEADSWEEP_FAULT_AT")
    if not spec:
        return
    import fcntl
    import fnmatch
    import time

    where, _, pattern = spec.partition(":")
    if where not in FAULT_POINTS:
        raise ValueError(f"HEADSWEEP_FAULT_AT={spec!r}: the point must be one of {', '.join(FAULT_POINTS)}")
    if where != point or not fnmatch.fnmatch(path.name, pattern or "*"):
        return
    log_path = os.environ.get("HEADSWEEP_FAULT_LOG", os.devnull)
    with open(log_path, "a+", encoding="utf-8") as log:
        fcntl.flock(log, fcntl.LOCK_EX)  # two processes at the point at once: one is held, the other goes on
        log.seek(0)
        if log_path != os.devnull and any(line.split()[1:2] == [point] for line in log):
            return  # this fault has landed already
        log.write(f"{os.getpid()} {point} {path} {detail}\n")
    while True:  # held until the test kills the process
        time.sleep(60)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` through a temporary file in the same folder, fsync and a rename:
    readers see the old file or the new one, never half of one; a failed write leaves no temporary file."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            if os.environ.get("HEADSWEEP_FAULT_AT"):
                f.write(payload[: len(payload) // 2])
                f.flush()
                fault_point("partial", path, tmp)
                f.write(payload[len(payload) // 2 :])
            else:
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        fault_point("before-rename", path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S,
              error: type[Exception] = TimeoutError) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) across processes, held for the ``with`` block.

    Raises ``error`` (a ``TimeoutError`` unless the caller names its own type) naming the lock file when another
    process holds it for longer than ``timeout`` seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Exception as exc:  # filelock.Timeout
        raise error(f"{path}: another process has held this lock for over {timeout:.0f} s; if none is "
                    f"running, delete the lock file") from exc
    try:
        yield
    finally:
        lock.release()
