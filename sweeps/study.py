"""Where a sweep's Optuna study lives: ``<sweep>/optuna.db`` on local storage; with a URI (``s3://...``), a SQLite
file on the driver's disk whose snapshot travels with Tune's experiment state, so that a new driver (another
machine, an empty disk) that resumes the sweep finds the study as Tune's saved searcher left it.

Tune pickles the searcher, and with it Optuna's storage; :class:`StudyStorage` is that storage, and when it is
unpickled it points at *this* machine's copy of the study (:func:`study_file`), not the path of the machine that
pickled it. No Ray here.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

from .results import OPTUNA_FILE
from .storage import download, exists, is_uri, join_storage, snapshot_sqlite


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

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = study_file(state["experiment"])
        path.parent.mkdir(parents=True, exist_ok=True)
        state["url"] = f"sqlite:///{path}"
        super().__setstate__(state)

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
