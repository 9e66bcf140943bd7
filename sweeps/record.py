"""Keep a finished sweep as a record: what a reader, the report and the test-set comparison read, without Tune's and
W&B's internals.

    python -m sweeps.record docs/experiments/multi30k/multi30k_en_de-importance      # one finished method folder
    python -m sweeps.record docs/experiments/multi30k --all                          # every finished one below
    python -m sweeps.record docs/experiments/multi30k/multi30k_en_de --dry-run       # say what would go
    python -m sweeps.record docs/experiments/multi30k --all --repack                 # records made before the
                                                                                     # test scores were packed

A method folder (``<results>/<sweep>`` or one of its ``<sweep>-<method>`` siblings) holds, once its trials have
finished, far more than anything reads again: Tune's experiment-state snapshots (one per ``--resume``), its searcher
and tuner pickles, each trial's folder with ``result.json``, ``progress.csv``, ``params.pkl``, TensorBoard events and
every kept checkpoint's copy of the logs, and the offline W&B runs. This command turns such a folder into a
*record*:

- kept as they are: ``trials.csv``, ``sweep.json``, ``finished.json``, ``optuna.db``, ``test_scores.csv``, ``report/``
  (its Markdown, PNGs and CSVs), and where the sweep has them ``constraints.json`` (the bounds its trials were judged
  by) and ``scheduler.json`` (MO-ASHA's rung records);
- each trial's logs (``metrics.jsonl``, ``gates.jsonl``, ``samples.jsonl`` of the checkpoint ``trials.csv`` names)
  move into one file, ``trial_logs.jsonl`` (:data:`TRIAL_LOGS_FILE`), one line per trial;
- the test split's cached translations and scores (``test/<trial id>.json``, one file a trial) are gathered into one
  compressed file (``test/scores.jsonl.gz``; ``analysis.testset`` reads either), the reference translations they
  share kept once (``test/references-<sha>.json.gz``, named by the fingerprint each score keeps);
- everything else goes, and ``record.json`` (:data:`RECORD_FILE`) says what went, when, and from which commit.

A record is finished for good: ``--resume`` of its sweep skips it (its ``trials.csv`` stands for its trials) and
``analysis`` reads its trials' histories, gates and samples from ``trial_logs.jsonl``. A folder the sweep's driver has
not marked finished (``finished.json``: written once every trial the method expects completed or diverged; a sweep
interrupted before all its trials started has none) is refused and left as it is: resuming it needs Tune's state. Rerunning the sweep brings the
rest back (see docs/experiments/README.md). Only local folders: a sweep in remote storage is recorded from a copy.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from model.checkpoint import git_commit
from model.cli import command_parser
from model.files import atomic_write
from model.train import GATES_FILE, METRICS_FILE, SAMPLES_FILE

from .constraints import CONSTRAINTS_FILE
from .results import (
    CHECKPOINT,
    FINISHED_FILE,
    FINISHED_STATUSES,
    OPTUNA_FILE,
    PRUNE,
    RECORD_FILE,
    REFERENCES_PREFIX,
    REPORT_DIR,
    STAGE,
    STATUS,
    SWEEP_FILE,
    TEST_DIR,
    TEST_PACK_FILE,
    TEST_SCORES_FILE,
    TRIAL_ID,
    TRIAL_LOGS_FILE,
    TRIALS_FILE,
    is_record,
    local_logs,
    read_jsonl,
    read_test_pack,
    references_file,
)
from .scheduler import SCHEDULER_FILE

KEPT = (TRIALS_FILE, SWEEP_FILE, FINISHED_FILE, OPTUNA_FILE, TEST_SCORES_FILE, TEST_DIR, REPORT_DIR, TRIAL_LOGS_FILE,
        RECORD_FILE, CONSTRAINTS_FILE, SCHEDULER_FILE)
LOGS = {"metrics": METRICS_FILE, "gates": GATES_FILE, "samples": SAMPLES_FILE}  # trial_logs.jsonl key: the file


SHOWN = 4  # removed entries named on the command line (record.json lists them all)


class RecordError(ValueError):
    """A folder cannot become a record (not a finished method folder of a sweep)."""


def trial_logs(folder: Path, trials: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per row of trials.csv: its trial ID and the logs of the checkpoint the row names."""
    entries = []
    for row in trials.to_dict("records"):
        where = local_logs(folder, str(row.get(CHECKPOINT) or ""))
        if where is None:
            if row[STAGE] == PRUNE:
                raise RecordError(f"{folder / TRIALS_FILE}: trial {row[TRIAL_ID]}: its checkpoint folder "
                                  f"{row.get(CHECKPOINT)!r} is not in {folder}; nothing of its logs can be kept")
            continue  # a base model trained elsewhere (pretrained/...): its own folder keeps its logs
        entries.append({TRIAL_ID: str(row[TRIAL_ID]), **{key: read_jsonl(where / name) for key, name in LOGS.items()}})
    return entries


def check_finished(folder: Path) -> pd.DataFrame:
    """The folder's trials table, once every trial in it finished; else RecordError naming what did not."""
    if is_record(folder):
        raise RecordError(f"{folder} is already a record ({RECORD_FILE})")
    table = folder / TRIALS_FILE
    if not table.is_file():
        raise RecordError(f"{folder} holds no {TRIALS_FILE}: not a sweep's method folder, or its sweep has not "
                          f"written its table yet")
    if not (folder / FINISHED_FILE).is_file():
        raise RecordError(f"{folder} holds no {FINISHED_FILE}: its sweep has not finished this method (the driver "
                          f"writes it once every trial it expects completed or diverged); resume the sweep first")
    trials = pd.read_csv(table, dtype={TRIAL_ID: str})
    prune = trials[trials[STAGE] == PRUNE]
    if prune.empty:
        raise RecordError(f"{table}: no trial (stage prune): nothing to record")
    open_ = prune[~prune[STATUS].isin(FINISHED_STATUSES)]
    if len(open_):
        listed = ", ".join(f"{t} ({s})" for t, s in zip(open_[TRIAL_ID], open_[STATUS]))
        raise RecordError(f"{table}: {len(open_)} trial(s) did not finish: {listed}; finish them with --resume "
                          f"first (a record cannot be resumed)")
    return trials


def pack_tests(test_dir: Path) -> int:
    """Gather a method folder's cached test scores (``<trial id>.json`` or ``.json.gz``, one a trial and one a base
    model) into one compressed file, :data:`TEST_PACK_FILE` (a line per file: its name and its content), without
    their reference translations, which go once into :func:`references_file`; returns the files gathered. Whatever
    the pack already holds stays in it; a second run changes nothing (gzip without a time stamp, lines by name)."""
    pack = test_dir / TEST_PACK_FILE
    entries = dict(read_test_pack(pack))
    loose = [p for p in sorted(test_dir.iterdir()) if p.name.endswith((".json", ".json.gz"))
             and not p.name.startswith(REFERENCES_PREFIX) and p.name != TEST_PACK_FILE]
    if not loose:
        return 0
    for path in loose:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        found = json.loads(raw)
        if "references" in found:
            refs = found.pop("references")
            shared = references_file(test_dir, found["references_sha256"])
            if not shared.exists():
                shared.write_bytes(gzip.compress((json.dumps(refs, ensure_ascii=False) + "\n").encode("utf-8"),
                                                 mtime=0))
        entries[path.name.split(".json")[0]] = found
    text = "".join(json.dumps({"name": name, "score": entries[name]}, ensure_ascii=False) + "\n"
                   for name in sorted(entries))
    atomic_write(pack, gzip.compress(text.encode("utf-8"), mtime=0))
    for path in loose:
        path.unlink()
    return len(loose)


def leftovers(folder: Path) -> list[Path]:
    """What recording removes: everything but the kept files (and the test cache, packed in place)."""
    return sorted(p for p in folder.iterdir() if p.name not in KEPT)


def record_folder(folder: str | Path, dry_run: bool = False) -> dict[str, Any]:
    """Make one finished method folder a record; returns what record.json says."""
    folder = Path(folder)
    if "://" in str(folder):
        raise RecordError(f"{folder}: only a local folder can become a record (copy the sweep first)")
    if not folder.is_dir():
        raise RecordError(f"{folder} is not a folder; give a method folder, e.g. results/quickstart")
    trials = check_finished(folder)
    entries = trial_logs(folder, trials)
    gone = leftovers(folder)
    cached = sorted((folder / TEST_DIR).glob("*.json*")) if (folder / TEST_DIR).is_dir() else []
    files = sum(1 for p in gone for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file() or f.is_symlink())
    summary = {"recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "git_commit": git_commit(),
               "trials": len(entries), "removed": [p.name + ("/" if p.is_dir() else "") for p in gone],
               "removed_files": files, "test_files_compressed": len(cached)}
    if dry_run:
        return summary
    atomic_write(folder / TRIAL_LOGS_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    if cached:
        pack_tests(folder / TEST_DIR)
    atomic_write(folder / RECORD_FILE, json.dumps(summary, indent=2) + "\n")  # before the removal: a record now
    for path in gone:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return summary


def method_folders_below(root: Path) -> list[Path]:
    """Every folder below ``root`` that holds a trials table and is not yet a record."""
    return sorted(p.parent for p in root.rglob(TRIALS_FILE) if not is_record(p.parent))


def main(argv: list[str] | None = None, prog: str = "python -m sweeps.record") -> int:
    parser = command_parser(prog, "Keep finished method folders as records: trials table, test translations and "
                            "scores, reports and the trials' logs; Tune's and W&B's internals removed.", [
        f"{prog} results/multi30k_en_de-importance",
        f"{prog} docs/experiments/multi30k --all --dry-run",
    ])
    parser.add_argument("folders", nargs="+", type=Path, help="method folders (with --all: folders to search)")
    parser.add_argument("--all", action="store_true",
                        help="record every finished method folder below the given folders; skip unfinished ones")
    parser.add_argument("--dry-run", action="store_true", help="change nothing; say what would be removed")
    parser.add_argument("--repack", action="store_true",
                        help="records already made: gather their test files into one, references kept once")
    args = parser.parse_args(argv)
    if args.repack:
        records = sorted({p.parent for root in args.folders for p in ([root / RECORD_FILE] if not args.all else
                                                                      root.rglob(RECORD_FILE)) if p.is_file()})
        for folder in records:
            print(f"{folder}: {pack_tests(folder / TEST_DIR) if (folder / TEST_DIR).is_dir() else 0} test files "
                  f"repacked")
        return 0 if records else 2
    targets = [f for root in args.folders for f in method_folders_below(root)] if args.all else args.folders
    status = 0
    for folder in targets:
        try:
            summary = record_folder(folder, args.dry_run)
        except (RecordError, OSError) as exc:
            print(f"{'skipped' if args.all else 'error'}: {exc}", file=sys.stderr)
            status = status if args.all else 2
            continue
        verb = "would remove" if args.dry_run else "removed"
        names = summary["removed"]
        shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
        print(f"{folder}: {summary['trials']} trials' logs in {TRIAL_LOGS_FILE}; {verb} {summary['removed_files']} "
              f"files ({shown or 'nothing'}); {summary['test_files_compressed']} test files compressed")
    return status


if __name__ == "__main__":
    sys.exit(main())
