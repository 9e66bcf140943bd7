"""Which of a trial's reported checkpoints are kept, deleted only when no resume can need them.

Tune's own ``CheckpointConfig(num_to_keep=K)`` deletes a trial's older checkpoint the moment a newer one arrives,
while the experiment state that ``Tuner.restore`` reads is saved every few seconds. A driver killed in between
(SIGKILL, a lost head node) leaves a state that points at a deleted checkpoint, and that trial can then never be
resumed. :class:`CheckpointRetention` keeps all checkpoints in Tune and deletes an older one itself, only once a
newer checkpoint of the same trial has been known for longer than two state-saving periods (so the state on disk
already points past it); :func:`prune_checkpoints` trims each trial to its newest K up to the one Tune recorded,
once a sweep's ``fit`` has returned and its final state is written (local or cloud storage).
"""

from __future__ import annotations

import os
import time
from pathlib import PurePosixPath
from typing import Any

from pyarrow import fs
from ray import tune

# Seconds between saves of Tune's experiment state; set before the Tuner runs (Tune's "auto" may stretch it).
STATE_PERIOD_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
DEFAULT_STATE_PERIOD = "10"


def state_period() -> float:
    """Tune's experiment-state period, fixing it to 10 s where the user has not chosen one."""
    value = os.environ.setdefault(STATE_PERIOD_ENV, DEFAULT_STATE_PERIOD)
    try:
        return float(value)
    except ValueError:  # "auto": at least 10 s, longer when saving is slow; wait generously
        return 600.0


def _delete(filesystem: Any, path: str) -> None:
    try:
        filesystem.delete_dir(path)
    except (OSError, FileNotFoundError):
        pass  # already gone


class CheckpointRetention(tune.Callback):
    """Keep each trial's newest ``keep`` checkpoints; delete an older one once it cannot be the one a resume needs."""

    def __init__(self, keep: int, period: float) -> None:
        self.keep = keep
        self.delay = 2.0 * period + 5.0
        self.seen: dict[str, list[tuple[float, Any]]] = {}

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.seen.setdefault(trial.trial_id, []).append((time.monotonic(), checkpoint))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for items in self.seen.values():
            # the oldest goes when more than `keep` remain and its successor is older than two state saves
            while len(items) > self.keep and now - items[1][0] > self.delay:
                checkpoint = items.pop(0)[1]
                _delete(checkpoint.filesystem, checkpoint.path)

    def __getstate__(self) -> dict[str, Any]:  # Tune stores callbacks with the experiment; checkpoints stay out
        return {"keep": self.keep, "delay": self.delay, "seen": {}}


def prune_checkpoints(grid: Any, keep: int) -> int:
    """Delete, for each trial of an experiment whose ``fit`` has returned, the checkpoint folders older than the
    newest ``keep`` up to the one Tune recorded last, on whatever storage the results live (local or cloud). The
    saved state points at that one; folders after it (written by a worker whose report the driver never processed,
    e.g. when interrupted) are left alone: a resume writes them again. Returns the number deleted."""
    deleted = 0
    for result in grid:
        if result.checkpoint is None:
            continue
        latest = PurePosixPath(result.checkpoint.path).name
        found = result.filesystem.get_file_info(fs.FileSelector(result.path))
        older = sorted(info.path for info in found if info.type == fs.FileType.Directory
                       and info.base_name.startswith("checkpoint_") and info.base_name < latest)
        for path in older[: max(0, len(older) - (keep - 1))]:
            _delete(result.filesystem, path)
            deleted += 1
    return deleted
