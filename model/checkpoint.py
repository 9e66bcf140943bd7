"""Checkpoints: written atomically, loaded with ``weights_only=True``, self-describing.

A checkpoint is one ``torch.save`` file holding the model, optimizer and schedule state, the step, epoch and
position in the epoch's batch order, the RNG states, the full config, the tokenizers (so that a checkpoint
translates on its own), the package versions and the git commit that made it.
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .config import Config, ConfigError, stored_config
from .data import Tokenizer, Tokenizers
from .files import atomic_write
from .transformer import Transformer

FORMAT_VERSION = 1
GATE_PARAM_SUFFIX = "gate.log_alpha"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model it is loaded into."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "sentencepiece", "sacrebleu", "numpy", "headsweep", "ray", "optuna", "wandb"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, with '+dirty' for uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], cfg: Config, tokenizers: Tokenizers) -> None:
    """Write ``state`` plus config, tokenizers and provenance to ``path`` atomically.

    ``state`` holds at least ``model``; the training loop adds optimizer, schedule, counters and RNG states.
    """
    payload = dict(state)
    payload.update(
        format_version=FORMAT_VERSION,
        config=cfg.to_dict(),
        tokenizers={"src": _bytes_tensor(tokenizers.src.proto), "tgt": _bytes_tensor(tokenizers.tgt.proto),
                    "joint": tokenizers.joint},
        versions=package_versions(),
        git_commit=git_commit(),
    )
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write(Path(path), buffer.getvalue())
    except OSError as exc:  # a full disk or quota, a file size limit, a vanished folder
        raise CheckpointError(f"could not write checkpoint {path} ({len(buffer.getbuffer()) / 2**20:.1f} MiB): "
                              f"{exc.strerror or exc}. Nothing was replaced: the checkpoints written before it "
                              "are intact; free space and resume.") from exc


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: no code from the file is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or hostile files
        raise CheckpointError(f"checkpoint {path} cannot be read safely: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION or "model" not in payload:
        raise CheckpointError(f"{path} is not a headsweep checkpoint (format {FORMAT_VERSION})")
    return payload


def checkpoint_config(payload: dict[str, Any]) -> Config:
    try:
        return stored_config(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint's stored config is invalid: {exc}") from exc


def checkpoint_tokenizers(payload: dict[str, Any]) -> Tokenizers:
    t = payload["tokenizers"]
    src = Tokenizer(bytes(t["src"].numpy().tobytes()))
    tgt = src if t["joint"] else Tokenizer(bytes(t["tgt"].numpy().tobytes()))
    return Tokenizers(src, tgt, joint=bool(t["joint"]))


def load_model_state(model: Transformer, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load weights into ``model``, checking that the architecture matches.

    A state without gates (a plain model) loads into a gated model: the gates keep their initial
    ``log_alpha``. Any other missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError`.
    """
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith(GATE_PARAM_SUFFIX)]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if unexpected or missing or wrong:
        details = []
        if wrong:
            details.append("shape mismatch " + "; ".join(wrong[:5]))
        if missing:
            details.append("missing " + ", ".join(missing[:5]))
        if unexpected:
            details.append("unexpected " + ", ".join(unexpected[:5]))
        raise CheckpointError(f"{source} does not match the model's architecture: {' | '.join(details)}")
    model.load_state_dict(state, strict=False)
