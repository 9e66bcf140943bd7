"""The results format of a sweep: where things lie in ``<storage>/<sweep>/`` and what the trials table holds.

This module writes them and owns their names; ``analysis/`` reads them through the names defined here. No Ray here
(a trial's Tune result is read through its attributes only).

``<storage>/<sweep>/``
    ``trials.csv`` (:data:`TRIALS_FILE`): one row per trial and base model (:func:`trial_row`);
    ``sweep.json`` (:data:`SWEEP_FILE`): the resolved sweep; after test-set scoring ``test_scores.csv`` and
    ``test/<trial id>.json`` (:data:`TEST_SCORES_FILE`, :data:`TEST_DIR`); ``optuna.db`` (:data:`OPTUNA_FILE`, local storage);
    Ray's trial folders, whose ``checkpoint_*`` folders each hold one ``step_*.pt`` and the run's logs
    (:data:`RUN_FILES`: ``metrics.jsonl``, ``samples.jsonl``, ``gates.jsonl``, ...).
``<storage>/pretrained/base-<hash>/``: the base models, shared by every sweep in the same storage.

A finished method folder kept as a record (``sweeps.record``) holds ``record.json`` and ``trial_logs.jsonl`` instead of
Ray's folders; its test cache is packed (``test/scores.jsonl.gz``).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from model import metrics as M
from model.checkpoint import CheckpointError
from model.train import DATA_STATS_FILE, GATES_FILE, METRICS_FILE, SAMPLES_FILE, STATUS_FILE, TRAIN_LOG_FILE

from .schema import GATES
from .storage import join_storage, local_copy, uri_of, write_text

TRIALS_FILE = "trials.csv"
SWEEP_FILE = "sweep.json"
OPTUNA_FILE = "optuna.db"
PRETRAINED_DIR = "pretrained"
WANDB_DIR = "wandb"  # offline W&B runs of a sweep on local storage
TEST_DIR = "test"  # in a method folder: one <trial id>.json per trial scored on the test split (analysis.testset)
TEST_SCORES_FILE = "test_scores.csv"  # in a method folder: the test scores of its scored trials
REFERENCES_PREFIX = "references-"  # a record's test/references-<fingerprint>.json.gz (sweeps.record)
TEST_PACK_FILE = "scores.jsonl.gz"  # a record's test/ scores, one line a scored trial (sweeps.record)
REPORT_DIR = "report"  # in a method folder: its report (analysis.report, analysis.testset)
FINISHED_FILE = "finished.json"  # in a method folder whose every expected trial completed or diverged (the driver)
RECORD_FILE = "record.json"  # in a method folder kept as a record (sweeps.record): what was removed, when
TRIAL_LOGS_FILE = "trial_logs.jsonl"  # in a record: one line per trial, its metrics, gates and samples logs
RUN_FILES = ("config.yaml", METRICS_FILE, SAMPLES_FILE, GATES_FILE, TRAIN_LOG_FILE, STATUS_FILE, DATA_STATS_FILE)

# Columns of trials.csv besides param.<key> and open_heads/<type>[/<layer>], in this order.
TABLE_METRICS = (M.BLEU, M.CHRF, M.OPEN_HEADS, M.L0, M.PENALTY, M.VALID_NLL, M.LOSS, M.LR, M.STEP, M.EPOCH,
                 M.SMALL_HEADS_CLOSED, M.BLEU_WITH_SMALL_HEADS)
# in the table where a trial reports them: distillation's term, the head budget's multipliers and targets (with a
# /<type> suffix for a budget per attention type)
OPTIONAL_METRICS = (M.DISTILL_LOSS, M.LAMBDA1, M.LAMBDA2, M.EXPECTED_OPEN, M.TARGET_OPEN, M.SPEEDUP)
TRIAL_ID, STAGE, METHOD, STATUS, ERROR = "trial_id", "stage", "method", M.STATUS, "error"
BEST_BLEU, BEST_BLEU_STEP, EVALUATIONS, SEED, BASE = "best_bleu", "best_bleu_step", "evaluations", "seed", "base"
WALL_SECONDS, CHECKPOINT, TRIAL_PATH = "wall_seconds", "checkpoint", "trial_path"
WANDB_RUN = "wandb_run"  # entity/project/run id, or the offline run's folder
NODE = "node"  # the Ray node that ran the trial's last stretch: its id (first 12 hex digits) and address
PROVENANCE = ("git_commit", "versions")
SIGNATURES = (M.BLEU_SIGNATURE, M.CHRF_SIGNATURE)
PARAM_PREFIX = "param."
PRETRAIN, PRUNE = STAGES = ("pretrain", "prune")  # `stage` of the rows of base models and of trials
BASE_METHOD = "base"  # `method` of a base model's row
ERRORED, NOT_STARTED = "error", "not started"  # a trial's status besides a run's own (model.metrics)
STOPPED = "stopped"  # `status` of a gate trial the early-stopping scheduler stopped at a rung (sweeps/scheduler.py)
STOPPED_AT = "stopped_at"  # ... and the step where it stopped
FINISHED_STATUSES = (M.COMPLETED, M.DIVERGED, STOPPED)  # a trial with one of these is never run again
SCORED_STATUSES = (M.COMPLETED, STOPPED)  # trials whose last scores are real: on the Pareto front and scored
# the params of the baselines' trials (trials.csv prefixes them with "param.")
BUDGET, LAYOUT_SEED, LAYOUT = "baseline.budget", "baseline.seed", "baseline.layout"


def checkpoint_file(folder: str | os.PathLike) -> Path:
    """The training checkpoint (``step_*.pt``) inside a reported checkpoint folder (one in remote storage is
    downloaded to its local copy first)."""
    found = sorted(local_copy(folder).glob("step_*.pt"))
    if len(found) != 1:
        raise CheckpointError(f"{folder}: expected one step_*.pt checkpoint, found {len(found)}")
    return found[0]


def is_record(folder: str | os.PathLike) -> bool:
    """Whether a (local) method folder is a finished sweep kept as a record (``sweeps.record``)."""
    return "://" not in str(folder) and (Path(folder) / RECORD_FILE).is_file()


def local_logs(folder: str | os.PathLike, checkpoint: str) -> Path | None:
    """A trial's checkpoint folder as trials.csv names it, or, where the sweep folder has moved since (a copy, a
    clone of a repository that keeps it), the same ``<trial folder>/checkpoint_<n>`` inside ``folder``; None where
    neither exists."""
    if not checkpoint or "://" in checkpoint:
        return None
    given = Path(checkpoint)
    if given.is_dir():
        return given
    moved = Path(folder) / given.parent.name / given.name
    return moved if moved.is_dir() else None


def last_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last JSON line of a ``*.jsonl`` log, or None."""
    path = Path(path)
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (a run's metrics, gates or samples); [] where the file is absent."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trial_row(result: Any, stage: str, params: list[str]) -> dict[str, Any]:
    """One row of trials.csv from a Tune result: params, final and best metrics, status, paths, provenance."""
    m = dict(result.metrics or {})
    row: dict[str, Any] = {TRIAL_ID: m.get("trial_id"), STAGE: stage}
    row.update({PARAM_PREFIX + k: (result.config or {}).get(k) for k in params})
    status = m.get(M.STATUS, NOT_STARTED)
    if result.error is not None:
        status = ERRORED
    row[STATUS] = status
    row[ERROR] = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
    if status == M.DIVERGED:
        row[ERROR] = m.get(M.REASON) or M.DIVERGED
    row.update({k: m.get(k) for k in TABLE_METRICS})
    per_type = sorted(k for k in m if k.startswith(M.OPEN_HEADS + "/"))
    row.update({k: m[k] for k in per_type})
    row.update({k: m[k] for k in sorted(m) if k.split("/")[0] in OPTIONAL_METRICS})
    history = result.metrics_dataframe
    if history is not None and M.STEP in history.columns:  # a trial resumed from an older checkpoint than its last
        history = history.drop_duplicates(M.STEP, keep="last")  # report repeats steps: the rerun's rows count
    if history is not None and M.BLEU in history.columns and history[M.BLEU].notna().any():
        best = history.loc[history[M.BLEU].idxmax()]
        row[BEST_BLEU], row[BEST_BLEU_STEP] = float(best[M.BLEU]), int(best[M.STEP])
    else:
        row[BEST_BLEU], row[BEST_BLEU_STEP] = None, None
    row[EVALUATIONS] = 0 if history is None else len(history)
    row[SEED], row[BASE] = m.get(SEED), m.get(BASE)
    row[WALL_SECONDS] = m.get("time_total_s")
    checkpoint = result.checkpoint
    row[CHECKPOINT] = uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else ""
    row[TRIAL_PATH] = uri_of(getattr(result, "filesystem", None), result.path)
    row[WANDB_RUN] = m.get(WANDB_RUN) or ""
    row[NODE] = m.get(NODE) or ""
    row.update({k: m.get(k) or "" for k in SIGNATURES})
    row.update({k: m.get(k) for k in PROVENANCE})
    return row


def read_trials_table(experiment_dir: str | os.PathLike):
    """A method folder's trials.csv as ``write_trials_table`` returned it."""
    import pandas as pd

    return pd.read_csv(Path(experiment_dir) / TRIALS_FILE, dtype={TRIAL_ID: str}).convert_dtypes()


def write_trials_table(experiment_dir: str, params: list[str], grid: Any, base_results: list[Any],
                       method: str = GATES, stopped: dict[str, int] | None = None, bounds: dict | None = None):
    """trials.csv in a sweep (or method) folder (the file ``analysis/`` reads); returns the DataFrame. Rows in
    trial-ID order (the order Tune created them): a resumed sweep lists its trials as the first run did.
    ``stopped``: trial id -> step, the trials an early-stopping scheduler stopped (status ``stopped``); ``bounds``:
    the sweep's constraints per base model (sweeps.constraints), which mark each trial ``feasible``."""
    import pandas as pd

    rows = [trial_row(r, PRETRAIN, params) for r in base_results]
    rows += sorted((trial_row(r, PRUNE, params) for r in grid), key=lambda row: str(row[TRIAL_ID] or ""))
    for row in rows:
        if row[STAGE] == PRUNE and str(row[TRIAL_ID]) in (stopped or {}) and row[STATUS] == M.RUNNING:
            row[STATUS], row[STOPPED_AT] = STOPPED, stopped[str(row[TRIAL_ID])]
    if bounds:
        from .constraints import feasibility

        feasibility([row for row in rows if row[STAGE] == PRUNE], bounds, BASE)
    df = pd.DataFrame(rows).convert_dtypes()
    df.insert(2, METHOD, [BASE_METHOD if stage == PRETRAIN else method for stage in df[STAGE]])
    if "://" not in experiment_dir:  # a write of an earlier driver killed before its rename
        for leftover in Path(experiment_dir).glob(f".{TRIALS_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)
    write_text(join_storage(experiment_dir, TRIALS_FILE), df.to_csv(index=False))
    return df


def references_file(test_dir: Path, fingerprint: str) -> Path:
    """Where a record keeps the reference translations its trials' test files share, by the fingerprint each
    trial's file keeps (``references_sha256``)."""
    return test_dir / f"{REFERENCES_PREFIX}{fingerprint}.json.gz"


def read_test_pack(path: Path) -> list[tuple[str, dict]]:
    """The (name, score) entries of a record's :data:`TEST_PACK_FILE`, in its order; none where it is absent."""
    if not path.is_file():
        return []
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    return [(entry["name"], entry["score"]) for entry in map(json.loads, lines) if entry]
