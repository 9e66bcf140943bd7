"""One sweep trial (a base model or a prune trial) as a plain function: no Ray here.

``run_trial`` trains in a scratch folder and hands every evaluation to ``report(metrics, checkpoint_dir)``:
``checkpoint_dir`` is a self-contained folder (the training checkpoint plus the run's logs) that the caller may
persist (Ray Tune copies it to the sweep's storage). Given such a folder back as ``restore_from``, the trial
continues where it stopped: the same steps, the same data order, and on the same kind of device the same
metrics, bitwise (shown on CPU, and on CUDA on the same GPU by ``bench/gpu_check.sh``; docs/gpu.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.config import Config
from model.train import CHECKPOINT_DIR, RunResult, train

from .results import RUN_FILES, checkpoint_file

TrialReport = Callable[[dict[str, Any], Path | None], None]


def pack_checkpoint(run_dir: Path, ckpt: Path, dest: Path) -> None:
    """Fill ``dest`` with the checkpoint file and the run's logs up to it (hard links where possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        os.link(ckpt, dest / ckpt.name)
    except OSError:
        shutil.copy2(ckpt, dest / ckpt.name)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)


def unpack_checkpoint(src: Path, run_dir: Path) -> None:
    """Rebuild a run folder from a packed checkpoint, replacing whatever the folder held."""
    ckpt = checkpoint_file(src)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy2(ckpt, run_dir / CHECKPOINT_DIR / ckpt.name)
    for name in RUN_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, run_dir / name)


def run_trial(
    cfg: Config,
    run_dir: str | os.PathLike,
    report: TrialReport,
    restore_from: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    teacher: str | os.PathLike | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``cfg`` in ``run_dir``, reporting each evaluation with a packed checkpoint folder.

    ``restore_from``: a folder given earlier to ``report``; the run continues from it. Without it the run starts
    afresh (from ``init_from``'s weights when given): anything left in ``run_dir`` was never reported, so it goes.
    ``teacher``: the unpruned model a config with ``distill`` learns from (the trial's base model); ``on_log``: gets
    every training-log record (``train.log_every``).
    """
    run_dir = Path(run_dir).resolve()
    if restore_from is not None:
        unpack_checkpoint(Path(restore_from), run_dir)
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)

    def report_packed(metrics: dict[str, Any], ckpt: Path | None) -> None:
        if ckpt is None:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="report-", dir=run_dir.parent) as tmp:
            pack_checkpoint(run_dir, ckpt, Path(tmp))
            report(metrics, Path(tmp))

    return train(cfg, run_dir, report=report_packed, resume=restore_from is not None, init_from=init_from, log=log,
                 teacher=teacher, on_log=on_log)
