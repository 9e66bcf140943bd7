"""A trial's scratch folder on its node, and the folders of killed trials taken back.

A trial trains in a folder of its own outside Tune's trial folder (Ray copies the trial folder to the storage), under
``$HEADSWEEP_SCRATCH`` or the temporary folder, and removes it when it ends. A trial whose process is killed (Ctrl-C
on the driver, a node's OOM killer, ``ray stop``, a worker that Ray ends) cannot remove it: its checkpoints stay
behind, about 90 MB a trial at Multi30k's size and gigabytes at a larger model's, and a node that runs many trials
fills its disk. So each scratch folder holds an exclusive ``flock`` on a lock file inside it for as long as its
trial runs; the kernel releases the lock however the process ends, and every new trial first removes the scratch
folders whose lock it can take. A folder without the lock file (one being set up, one written before this scheme,
anything else in the temporary folder) is never touched, and neither is one whose lock is held: its trial is alive,
in this process namespace or another sharing the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing is reclaimed (folders are still removed when trials end)
    fcntl = None  # type: ignore[assignment]

PREFIX = "headsweep-"  # every scratch folder's name starts with it: headsweep-<trial id>-<random>
LOCK = ".owner.lock"  # held (flock, exclusive) by the trial that owns the folder, while it runs


def scratch_root() -> Path:
    """Where scratch folders go: ``$HEADSWEEP_SCRATCH`` (e.g. a node's local disk), else the temporary folder."""
    return Path(os.environ.get("HEADSWEEP_SCRATCH") or tempfile.gettempdir())


def _try_lock(fd: int) -> bool:
    """True when the exclusive lock on ``fd`` was taken now; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def reclaim(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``root`` whose owner is gone (their lock can be taken); the folders removed."""
    if fcntl is None:
        return []
    root = scratch_root() if root is None else Path(root)
    removed = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        try:
            fd = os.open(folder / LOCK, os.O_RDWR)
        except OSError:  # no lock file: not a folder of this scheme, or its owner is still setting it up
            continue
        try:
            if _try_lock(fd):  # the owner is gone (its lock went with its process)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:  # a file system without locks: nothing can be told about the owner
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def trial_scratch(trial_id: str, root: Path | None = None) -> Iterator[Path]:
    """A new scratch folder for trial ``trial_id``, locked while the block runs and removed after it; the folders
    of killed trials under the same root are removed first (:func:`reclaim`)."""
    root = scratch_root() if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    reclaim(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{trial_id}-", dir=root))
    fd = None
    if fcntl is not None:
        # locked under another name first, then renamed into place: no other trial ever sees the lock file unlocked
        pending = folder / f"{LOCK}.pending"
        fd = os.open(pending, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            os.replace(pending, folder / LOCK)
        except OSError:  # a file system without locks: the folder is removed at the end, not reclaimable
            pass
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)
