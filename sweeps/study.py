"""Where a sweep's Optuna study lives: ``<sweep>/optuna.db`` on local storage; with a URI (``s3://...``), a SQLite
file on the driver's disk whose snapshot travels with Tune's experiment state, so that a new driver (another
machine, an empty disk) that resumes the sweep finds the study as Tune's saved searcher left it.

Tune pickles the searcher, and with it Optuna's storage; :class:`StudyStorage` is that storage, and when it is
unpickled it points at *this* machine's copy of the study (:func:`study_file`), not the path of the machine that
pickled it. No Ray here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import TrialState

from model.files import fault_point

from .results import OPTUNA_FILE
from .storage import download, exists, filesystem, is_uri, join_storage, read_bytes, snapshot_sqlite

TUNE_STATE_PREFIX = "experiment_state"  # Tune's experiment-state files: experiment_state-<time>.json


class StateError(RuntimeError):
    """A sweep folder cannot be resumed as it is: a damaged Tune state, a damaged or locked study."""


def check_resumable(experiment: str) -> None:
    """Before a sweep folder is resumed, read-only: Tune's newest experiment state parses as JSON, and the study's
    SQLite file (on local storage) passes SQLite's quick check and is not locked by another process. A problem
    raises :class:`StateError` naming the file and what to do; nothing is written or repaired."""
    import pyarrow.fs

    fs, path = filesystem(experiment)
    names = sorted(f.base_name for f in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
                   if f.type == pyarrow.fs.FileType.File and f.base_name.startswith(TUNE_STATE_PREFIX)
                   and f.base_name.endswith(".json"))
    if names:
        newest = join_storage(experiment, names[-1])
        try:
            json.loads(read_bytes(newest) or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(f"{newest}: Tune's experiment state is damaged ({exc}); it was left as it is. Put back "
                             f"a copy of the file (e.g. from a backup of the sweep folder), or start a new sweep "
                             f"(--set name=...)") from None
    study = study_file(experiment)
    if is_uri(experiment) or not study.exists():
        return
    try:
        con = sqlite3.connect(f"file:{study}?mode=rw", uri=True, timeout=2.0, isolation_level=None)
        try:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            con.execute("BEGIN IMMEDIATE")  # the write lock a resumed search needs; released at once
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise StateError(f"{study}: the Optuna study cannot be opened ({exc}); it was left as it is") from None
        raise StateError(f"{study}: the Optuna study is locked by another process (another driver of this sweep, "
                         f"or an open optuna-dashboard); stop it, then resume") from None
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{study}: the Optuna study is damaged ({exc}); it was left as it is. Put back a copy of "
                         f"the file, or start a new sweep (--set name=...)") from None


def study_file(experiment: str) -> Path:
    """The SQLite file of a sweep's study on this machine: in the sweep folder on local storage; for a URI, in this
    machine's temporary folder, named by the URI."""
    if not is_uri(experiment):
        return Path(experiment) / OPTUNA_FILE
    digest = hashlib.sha1(experiment.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "headsweep-studies" / digest / OPTUNA_FILE


class StudyStorage(RDBStorage):
    """Optuna's SQLite storage of one sweep folder (``experiment``: its path or URI)."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        path = study_file(experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(f"sqlite:///{path}")
        self._watch_commits()

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = study_file(state["experiment"])
        path.parent.mkdir(parents=True, exist_ok=True)
        state["url"] = f"sqlite:///{path}"
        super().__setstate__(state)
        self._watch_commits()

    def _watch_commits(self) -> None:
        """The test-only fault point "commit" (model.files): a finished trial's row is in the SQLite file's open
        transaction (flushed, its journal written) and not committed."""
        self._finishing = False
        if os.environ.get("HEADSWEEP_FAULT_AT", "").startswith("commit:"):
            import sqlalchemy

            path = study_file(self.experiment)
            sqlalchemy.event.listen(self.engine, "commit", lambda _conn: self._finishing and fault_point(
                "commit", path, "finished trial"))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        self._finishing = state.is_finished()
        try:
            return super().set_trial_state_values(trial_id, state, values)
        finally:
            self._finishing = False

    @property
    def remote(self) -> bool:
        return is_uri(self.experiment)

    def save_snapshot(self, folder: str) -> None:
        """Put a consistent copy of the study into ``folder`` (Tune's experiment-state folder, which Tune uploads to
        the storage with the searcher's state)."""
        if self.remote:
            snapshot_sqlite(study_file(self.experiment), Path(folder) / OPTUNA_FILE)


def ensure_study_file(experiment: str) -> None:
    """Before a restored sweep's searcher is unpickled (``Tuner.restore``): this machine's copy of a remote study,
    from the snapshot uploaded with the experiment state being restored (what a fresh driver needs, and what keeps
    the study consistent with the restored searcher)."""
    if is_uri(experiment):
        remote = join_storage(experiment, OPTUNA_FILE)
        if exists(remote):
            download(remote, study_file(experiment), refresh=True)


def fresh_study_file(experiment: str) -> None:
    """Before a new sweep on remote storage: no study left on this machine by an earlier sweep of the same URI
    (Optuna would load its trials into the new study)."""
    if is_uri(experiment):
        study_file(experiment).unlink(missing_ok=True)
