"""Weights & Biases: one run per trial (metrics at every evaluation, a gate heatmap image, translation samples) and
one summary run per sweep (the report's charts, the Pareto table, the hypervolume).

Offline unless a key is configured (``wandb sync DIR`` uploads later). Logging never stops or slows a trial: a
failing W&B call is reported once and logging is switched off for that trial. Each run is finished, and W&B's
service shut down, in the process that started it, so that no W&B teardown is left for the process's exit (where
it would fail loudly once Ray has stopped the worker). No Ray here; ``wandb`` is imported only when a run starts.
"""

from __future__ import annotations

import netrc
import os
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.config import ATTENTION_TYPES

CELL = 12  # pixels per head in the heatmap
OPEN_RGB = np.array([46, 160, 67], dtype=np.float64)  # eval gate 1
CLOSED_RGB = np.array([235, 235, 235], dtype=np.float64)  # eval gate 0


def has_api_key() -> bool:
    """True when W&B could log online: WANDB_API_KEY set, or a login stored in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def unreachable_backend(timeout: float = 5.0) -> str | None:
    """Why the W&B backend ($WANDB_BASE_URL, else api.wandb.ai) cannot be reached, or None when a TCP connection
    to it opens within ``timeout`` seconds. Checked once by the sweep driver, so that trials do not each wait."""
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{url.scheme}://{url.hostname}:{port} cannot be reached ({exc.strerror or exc})"


def resolve_mode(mode: str) -> str:
    """'auto' -> 'online' with a key, else 'offline'. WANDB_MODE=offline/disabled in the environment wins."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "disabled", "dryrun") and mode != "disabled":
        return "disabled" if env == "disabled" else "offline"
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    return mode


def gate_image(gates: dict[str, dict[str, list]], value: str = "gate") -> np.ndarray:
    """RGB image (uint8) of one evaluation's gates: a band per attention type, rows = layers, columns = heads.

    ``gates`` is one entry of ``gates.jsonl`` (``Transformer.gate_report()``); green = open (1), grey = closed (0).
    Bands are separated by a white row of cells.
    """
    bands = [np.asarray(gates[t][value], dtype=np.float64) for t in ATTENTION_TYPES if t in gates]
    if not bands:
        return np.zeros((CELL, CELL, 3), dtype=np.uint8)
    width = max(b.shape[1] for b in bands)
    rows: list[np.ndarray] = []
    for i, band in enumerate(bands):
        if i:
            rows.append(np.full((1, width), np.nan))
        padded = np.full((band.shape[0], width), np.nan)
        padded[:, : band.shape[1]] = band
        rows.append(padded)
    grid = np.clip(np.concatenate(rows), 0.0, 1.0)  # (cells_y, cells_x)
    rgb = grid[..., None] * OPEN_RGB + (1.0 - grid[..., None]) * CLOSED_RGB
    rgb[np.isnan(grid)] = 255.0
    return np.kron(rgb, np.ones((CELL, CELL, 1))).round().astype(np.uint8)


def _run_path(run: Any, mode: str) -> str:
    """``entity/project/id`` of an online run, the folder of an offline one."""
    if mode == "offline":
        settings = getattr(run, "settings", None)
        return str(getattr(settings, "sync_dir", "") or getattr(run, "dir", "") or "")
    return str(getattr(run, "path", "") or "")


class TrialLogger:
    """A W&B run for one trial (or base model). ``log`` never raises."""

    def __init__(
        self,
        mode: str,
        project: str,
        group: str,
        run_id: str,
        name: str,
        config: dict[str, Any],
        directory: str | Path,
        entity: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "prune",
        init_timeout: float = 30.0,
        upload_timeout: float = 60.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.run = None
        self._log = log
        self._path = ""
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log("wandb is not installed: this trial is not logged to W&B")
            return
        self._wandb = wandb
        Path(directory).mkdir(parents=True, exist_ok=True)
        kwargs = dict(project=project, entity=entity, group=group, id=run_id, name=name,
                      dir=str(directory), config=config, tags=list(tags or []), job_type=job_type,
                      reinit="finish_previous")
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                settings = wandb.Settings(init_timeout=init_timeout, finish_timeout=upload_timeout, silent=True,
                                          console="off")
                resume = {"resume": "allow"} if attempt == "online" else {}  # a resumed trial continues its run
                self.run = wandb.init(mode=attempt, settings=settings, **resume, **kwargs)
                self._path = _run_path(self.run, attempt)
                break
            except Exception as exc:  # noqa: BLE001 - any W&B failure: try offline, then give up on W&B only
                log(f"W&B {attempt} init failed ({type(exc).__name__}: {exc}); "
                    + ("retrying offline" if attempt == "online" else "this trial is not logged to W&B"))

    def log(self, metrics: dict[str, Any], step: int, gates: dict | None = None,
            samples: list[dict[str, str]] | None = None) -> None:
        if self.run is None:
            return
        wandb = self._wandb
        try:
            record: dict[str, Any] = {k: v for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if gates:
                record["gates"] = wandb.Image(gate_image(gates),
                                              caption="rows: layers, columns: heads; bands: "
                                              + ", ".join(t for t in ATTENTION_TYPES if t in gates)
                                              + "; green = open")
            if samples:
                table = wandb.Table(columns=["step", "source", "reference", "hypothesis"])
                for s in samples:
                    table.add_data(step, s["source"], s["reference"], s["hypothesis"])
                record["samples"] = table
            self.run.log(record, step=step)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop a trial
            self._log(f"W&B logging failed ({type(exc).__name__}: {exc}); W&B is off for the rest of this trial")
            self.finish()

    def log_report(self, images: dict[str, Path], tables: dict[str, Any], values: dict[str, float]) -> None:
        """A sweep's summary: chart images (PNG/GIF files), tables (DataFrames) and summary values."""
        if self.run is None:
            return
        wandb = self._wandb
        try:
            record: dict[str, Any] = {name: wandb.Image(str(path)) for name, path in images.items()}
            record.update({name: wandb.Table(dataframe=df) for name, df in tables.items()})
            self.run.log(record)
            self.run.summary.update(values)
        except Exception as exc:  # noqa: BLE001 - the report on disk is what counts
            self._log(f"W&B summary failed ({type(exc).__name__}: {exc})")

    @property
    def path(self) -> str:
        """Where this run is: ``entity/project/run_id`` online, the offline run's folder offline, '' without W&B."""
        return self._path

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run and shut W&B's service down in this process (safe to call twice)."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._log(f"W&B finish failed ({type(exc).__name__}: {exc})")
        try:
            self._wandb.teardown(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._log(f"W&B teardown failed ({type(exc).__name__}: {exc})")


def log_sweep_summary(sweep: Any, folder: Path, front: Any, values: dict[str, float]) -> None:
    """A sweep's report as one W&B run of its group (``<sweep>-summary``): every chart PNG in ``folder``, the
    Pareto table ``front`` and the summary ``values``; as the sweep's W&B settings say (offline without a key)."""
    w = sweep.schema.wandb
    mode = resolve_mode(w.mode)
    if mode == "disabled":
        return
    from .results import WANDB_DIR, join_storage
    from .storage import is_uri, mirror_path, upload
    from .sweep import schema_dict

    stored = join_storage(sweep.experiment_dir, WANDB_DIR)
    directory = str(mirror_path(stored)) if is_uri(stored) else stored  # written locally, then uploaded
    logger = TrialLogger(mode, w.project, sweep.wandb_group, run_id=f"{sweep.name}-summary",
                         name=f"{sweep.name}-summary", config=schema_dict(sweep),
                         directory=directory, entity=w.entity, tags=w.tags,
                         job_type="summary", init_timeout=w.init_timeout, upload_timeout=w.upload_timeout)
    images = {p.stem: p for p in sorted(Path(folder).glob("*.png"))}
    logger.log_report(images, {"pareto_front": front.astype(str)}, values)
    logger.finish()
    if is_uri(stored) and mode == "offline":
        upload(directory, stored)
