"""W&B per trial: the gate heatmap, the choice of mode, and logging that never stops a trial."""

from __future__ import annotations

import numpy as np
import pytest

from sweeps import wandb_log
from sweeps.wandb_log import CELL, TrialLogger, gate_image, resolve_mode


def test_heatmap_has_a_band_per_attention_type_and_a_cell_per_head():
    gates = {"enc_self": {"gate": [[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]]}, "dec_cross": {"gate": [[1.0, 1.0]]}}
    img = gate_image(gates)
    assert img.dtype == np.uint8 and img.shape == ((2 + 1 + 1) * CELL, 3 * CELL, 3)  # 2 layers, gap, 1 layer
    cell = lambda r, c: tuple(img[r * CELL + CELL // 2, c * CELL + CELL // 2])
    assert cell(0, 0) == tuple(wandb_log.OPEN_RGB.astype(int)) and cell(0, 1) == tuple(wandb_log.CLOSED_RGB.astype(int))
    assert cell(0, 1) != cell(0, 2) != cell(0, 0)  # a half-open gate is in between
    assert cell(2, 0) == (255, 255, 255) and cell(3, 2) == (255, 255, 255)  # the gap, and dec_cross's missing head
    assert cell(3, 0) == cell(3, 1) == cell(0, 0)


def test_mode_auto_is_online_only_with_a_key(monkeypatch, tmp_path, record):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    without_key = resolve_mode("auto")
    assert without_key == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") == "offline"  # the environment says no network
    assert resolve_mode("disabled") == "disabled"
    record("W&B with no key (mode auto): offline", offline_without_key=int(without_key == "offline"))


class FakeRun:
    def __init__(self, fail_log: bool = False):
        self.logged, self.finished, self.fail_log = [], False, fail_log

    def log(self, record, step):
        if self.fail_log:
            raise ConnectionError("backend down")
        self.logged.append((step, record))

    def finish(self, exit_code=0):
        self.finished = True


def test_a_failing_online_start_falls_back_to_offline_and_a_failing_backend_never_stops_the_trial(monkeypatch, record):
    wandb = pytest.importorskip("wandb")
    attempts, messages = [], []
    run = FakeRun(fail_log=True)

    def fake_init(mode, **kwargs):
        attempts.append(mode)
        if mode == "online":
            raise TimeoutError("no network")
        return run

    monkeypatch.setattr(wandb, "init", fake_init)
    logger = TrialLogger("online", "p", "g", "id", "name", {}, "/tmp/wandb-test", log=messages.append)
    assert attempts == ["online", "offline"] and logger.run is run
    escaped = 0  # exceptions that reached the trial (each would stop it)
    for step, extra in ((1, {"gates": {"enc_self": {"gate": [[1.0]]}}}), (2, {})):  # the first raises inside
        try:
            logger.log({"bleu": float(step)}, step=step, **extra)
        except Exception:
            escaped += 1
        if step == 1:
            assert logger.run is None and run.finished and any("W&B is off" in m for m in messages)
    logger.finish()
    assert escaped == 0
    record("W&B online start failing, then a backend failing mid-trial", exceptions_reaching_the_trial=escaped,
           fell_back_offline=attempts.count("offline"))


def test_metrics_are_logged_with_their_step_and_only_numbers(monkeypatch):
    wandb = pytest.importorskip("wandb")
    run = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda mode, **kwargs: run)
    logger = TrialLogger("offline", "p", "g", "id", "name", {}, "/tmp/wandb-test", log=lambda _: None)
    logger.log({"bleu": 3.5, "status": "running", "open_heads": 7}, step=20)
    (step, record), = run.logged
    assert step == 20 and record == {"bleu": 3.5, "open_heads": 7}
    logger.finish()
    assert run.finished


def test_an_unreachable_backend_is_found_once_before_the_sweep(monkeypatch):
    import socket

    from sweeps.wandb_log import unreachable_backend

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert unreachable_backend(timeout=2) is None
        port = server.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # closed now
    reason = unreachable_backend(timeout=2)
    assert reason and f"127.0.0.1:{port}" in reason and "refused" in reason.lower()
