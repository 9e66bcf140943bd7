"""Reading sweep results: the trials table, the sweep's config, and each trial's history and gates.

A sweep folder (``<results>/<sweep>``) holds ``trials.csv`` (one row per trial and base model, written by
``sweeps.results``, which owns the format's names), ``sweep.json`` (the resolved sweep) and Ray's trial folders,
whose checkpoints carry the trial's ``metrics.jsonl``, ``gates.jsonl`` and ``samples.jsonl``. Without a table, Ray's
own results are read instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from model import metrics as M
from model.train import GATES_FILE, METRICS_FILE, SAMPLES_FILE
from sweeps.results import (
    CHECKPOINT,
    PARAM_PREFIX,
    PRETRAIN,
    PRUNE,
    SCORED_STATUSES,
    STAGE,
    STATUS,
    SWEEP_FILE,
    TEST_SCORES_FILE,
    TRIAL_ID,
    TRIAL_LOGS_FILE,
    TRIAL_PATH,
    TRIALS_FILE,
    WALL_SECONDS,
    is_record,
    local_logs,
    read_jsonl,
)
from sweeps.storage import StorageError, check_uri, download, is_uri, local_copy

LABEL = "sweep"  # column naming the sweep (or method) a row came from
LOGS = "logs"  # column: where a trial's logs are read from on this machine (not in trials.csv)
DEFAULT_OBJECTIVES = ((M.BLEU, "max"), (M.OPEN_HEADS, "min"))


class ResultsError(ValueError):
    """A folder is not a sweep's results, or lacks what a chart needs."""


@dataclass
class SweepResults:
    """One sweep's results: its table, its objectives and where it lives."""

    label: str
    path: Path  # a local folder: the sweep's own, or the local copy of one in remote storage
    trials: pd.DataFrame  # every row: prune trials and base models (column `stage`)
    config: dict[str, Any]  # sweep.json, or {} when absent
    source: str = ""  # where the sweep lives: its folder, or its URI (s3://...); default: ``path``

    @property
    def remote(self) -> bool:
        return is_uri(self.source)

    @property
    def objectives(self) -> list[str]:
        return [o["metric"] for o in self.config.get("objectives", [])] or [m for m, _ in DEFAULT_OBJECTIVES]

    @property
    def directions(self) -> list[str]:
        return [o["mode"] for o in self.config.get("objectives", [])] or [d for _, d in DEFAULT_OBJECTIVES]

    @property
    def params(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith(PARAM_PREFIX)]

    @property
    def prune(self) -> pd.DataFrame:
        return self.trials[self.trials[STAGE] == PRUNE]

    @property
    def completed(self) -> pd.DataFrame:
        """The trials with real final scores: completed, or stopped early at a rung (on the front as what they are)."""
        return self.prune[self.prune[STATUS].isin(SCORED_STATUSES)]

    @property
    def bases(self) -> pd.DataFrame:
        return self.trials[self.trials[STAGE] == PRETRAIN]


def load_sweep(path: str | Path, label: str | None = None) -> SweepResults:
    """Read one sweep folder, or one in remote storage (``s3://bucket/prefix/<sweep>``: its own files are copied to
    a local mirror, its trials' logs when a chart needs them); ``label`` defaults to the sweep's name."""
    source = str(path)
    if is_uri(source):
        source = check_uri(source)
        try:
            path = download(source, recursive=False, refresh=True)  # the table, sweep.json, optuna.db: rewritten
        except StorageError as exc:
            raise ResultsError(f"{exc}; give a sweep's folder, e.g. s3://bucket/prefix/quickstart") from None
        if not (path / TRIALS_FILE).exists():
            raise ResultsError(f"{source} holds no {TRIALS_FILE} (a sweep in remote storage is read from its table)")
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path} is not a folder; give a sweep's results folder, e.g. results/quickstart")
    config = json.loads((path / SWEEP_FILE).read_text()) if (path / SWEEP_FILE).exists() else {}
    if (path / TRIALS_FILE).exists():
        trials = pd.read_csv(path / TRIALS_FILE)
    elif list(path.glob("*/result.json")):
        trials = _from_ray(path)
    else:
        raise ResultsError(f"{path} holds neither {TRIALS_FILE} nor Ray trial folders (*/result.json)")
    label = label or config.get("label") or config.get("name") or path.name
    trials = with_test_scores(trials, path / TEST_SCORES_FILE)
    if not is_uri(source):
        trials = with_log_locations(trials, path)
    trials.insert(0, LABEL, label)
    results = SweepResults(label, path, trials, config, source if is_uri(source) else str(path))
    for metric in results.objectives:  # a method none of whose trials has reported yet: no score, no column
        if metric not in trials.columns:
            trials[metric] = float("nan")
    return results


TEST_COLUMNS = ("test_bleu", "test_chrf")  # analysis.testset writes them; validation BLEU stays in `bleu`


def with_test_scores(trials: pd.DataFrame, scores: Path) -> pd.DataFrame:
    """The trials table with its scored trials' test BLEU and chrF beside their validation scores (NaN where a
    trial was not scored: only what validation chose is)."""
    if not scores.exists():
        return trials
    found = pd.read_csv(scores, dtype={TRIAL_ID: str})
    keep = [c for c in TEST_COLUMNS if c in found.columns]
    merged = trials.drop(columns=[c for c in keep if c in trials.columns]).astype({TRIAL_ID: str})
    return merged.merge(found[[TRIAL_ID, *keep]].drop_duplicates(TRIAL_ID), on=TRIAL_ID, how="left")


def load_sweeps(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[SweepResults]:
    """Several sweeps (or methods), labelled; labels must be distinct."""
    labels = list(labels or [None] * len(paths))
    if len(labels) != len(paths):
        raise ResultsError(f"{len(paths)} folders but {len(labels)} labels")
    sweeps = [load_sweep(p, lab) for p, lab in zip(paths, labels)]
    names = [s.label for s in sweeps]
    if len(set(names)) != len(names):
        raise ResultsError(f"two sweeps share a label ({', '.join(names)}); pass distinct labels")
    return sweeps


def _from_ray(path: Path) -> pd.DataFrame:
    """A trials table from Ray's trial folders alone (last result of each), when trials.csv is missing."""
    rows = []
    for result_file in sorted(path.glob("*/result.json")):
        lines = [ln for ln in result_file.read_text().splitlines() if ln.strip()]
        if not lines:
            continue
        last = json.loads(lines[-1])
        params = json.loads((result_file.parent / "params.json").read_text())
        checkpoints = sorted(result_file.parent.glob("checkpoint_*"))
        rows.append({TRIAL_ID: last.get("trial_id"), STAGE: last.get("stage", PRUNE),
                     **{f"{PARAM_PREFIX}{k}": v for k, v in params.items()},
                     **{k: v for k, v in last.items() if not isinstance(v, dict)},
                     "evaluations": len(lines), CHECKPOINT: str(checkpoints[-1]) if checkpoints else "",
                     TRIAL_PATH: str(result_file.parent), WALL_SECONDS: last.get("time_total_s")})
    return pd.DataFrame(rows, columns=None if rows else [TRIAL_ID, STAGE, STATUS])  # no trial has reported yet


def with_log_locations(trials: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The table with a column (:data:`LOGS`) saying where each trial's logs are read from on this machine: the
    record's trial_logs.jsonl, or the checkpoint folder (moved with its sweep folder where the recorded path is gone),
    or nothing (a folder in remote storage: its checkpoints are copied when read)."""
    if is_record(folder):
        where = [str(folder / TRIAL_LOGS_FILE)] * len(trials)
    else:
        where = [str(local_logs(folder, str(c)) or "") if isinstance(c, str) else "" for c in trials.get(
            CHECKPOINT, pd.Series([""] * len(trials)))]
    return trials.assign(**{LOGS: where})


@lru_cache(maxsize=8)
def _record_logs(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    return {str(entry[TRIAL_ID]): entry for entry in read_jsonl(Path(path))}


def _log(row: pd.Series, name: str) -> list[dict[str, Any]] | None:
    """One log of a trial (``metrics.jsonl``, ``gates.jsonl`` or ``samples.jsonl``), or None where it has none: read
    from its sweep's record, its local checkpoint folder, or the local copy of one in remote storage (model weights
    left out)."""
    where = str(row.get(LOGS) or "")
    if where.endswith(TRIAL_LOGS_FILE):
        entry = _record_logs(where, Path(where).stat().st_mtime_ns).get(str(row.get(TRIAL_ID)))
        return None if entry is None else entry.get(name.removesuffix(".jsonl"))
    where = where or str(row.get(CHECKPOINT) or "")
    if is_uri(where):
        try:
            where = str(local_copy(where, skip=(".pt",)))
        except StorageError as exc:
            raise ResultsError(f"trial {row.get(TRIAL_ID)}: {exc}") from None
    path = Path(where) / name
    return read_jsonl(path) if where and path.is_file() else None


def trial_history(row: pd.Series) -> pd.DataFrame:
    """Every evaluation of one trial (from its last checkpoint's metrics.jsonl, else Ray's progress.csv)."""
    found = _log(row, METRICS_FILE)
    if found is not None:
        return pd.DataFrame(found)
    progress = Path(str(row.get(TRIAL_PATH) or "")) / "progress.csv"
    if progress.exists():
        return pd.read_csv(progress)
    raise ResultsError(f"trial {row.get(TRIAL_ID)}: no metrics.jsonl in {row.get(LOGS) or row.get(CHECKPOINT)} and "
                       f"no {progress}")


def trial_gates(row: pd.Series) -> list[dict[str, Any]]:
    """The gate report of every evaluation of one trial: [{step, gates: {type: {gate, p_open, ...}}}]."""
    found = _log(row, GATES_FILE)
    if not found:
        raise ResultsError(f"trial {row.get(TRIAL_ID)}: no gates.jsonl in its checkpoint "
                           f"{row.get(LOGS) or row.get(CHECKPOINT)}")
    return found


def trial_samples(row: pd.Series) -> list[dict[str, str]]:
    """The translation samples of the trial's last evaluation."""
    found = _log(row, SAMPLES_FILE)
    return found[-1].get("samples", []) if found else []
