"""A sweep trial without Ray: reported checkpoint folders are self-contained and a trial restored from one ends
exactly where the unbroken trial ends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model import metrics as M
from model.checkpoint import load_checkpoint
from sweeps.results import RUN_FILES, checkpoint_file, last_record
from sweeps.trial import run_trial
from tests.helpers import tiny_config

GATED = ("gates.mode=learned", "gates.penalty=0.05", "gates.attention=[enc_self, dec_cross]", "train.max_steps=9",
         "train.eval_every=3", "model.dropout=0.1", "gates.lr_scale=10.0")


class Stop(Exception):
    """Stands for a trial killed after some report."""


def collect(store: Path, stop_after: int | None = None):
    """A report function that keeps every reported folder (as Ray Tune would) and can stop the trial."""
    reports: list[dict] = []

    def report(metrics, folder):
        reports.append(metrics)
        if folder is not None:
            shutil.copytree(folder, store / f"report_{len(reports)}")
        if stop_after is not None and len(reports) == stop_after:
            raise Stop

    return reports, report


def test_each_report_carries_a_self_contained_checkpoint_folder(tmp_path: Path):
    reports, report = collect(tmp_path / "store")
    run_trial(tiny_config(*GATED, "train.log_every=3"), tmp_path / "run", report, log=lambda _: None)
    assert [r[M.STEP] for r in reports] == [3, 6, 9]
    for i, metrics in enumerate(reports, 1):
        folder = tmp_path / "store" / f"report_{i}"
        assert checkpoint_file(folder).name == f"step_{metrics[M.STEP]:08d}.pt"
        assert {p.name for p in folder.iterdir()} >= set(RUN_FILES) - {"status.json"}
        assert last_record(folder / "metrics.jsonl")[M.BLEU] == metrics[M.BLEU]  # logs up to this report
        assert last_record(folder / "gates.jsonl")[M.STEP] == metrics[M.STEP]
        assert last_record(folder / "train_log.jsonl")[M.STEP] == metrics[M.STEP]
    assert M.open_heads_layer_key("enc_self", 1) in reports[-1]


def test_a_trial_restored_from_a_reported_folder_ends_exactly_like_the_unbroken_one(tmp_path: Path):
    cfg = tiny_config(*GATED)
    full, report = collect(tmp_path / "full")
    run_trial(cfg, tmp_path / "a", report, log=lambda _: None)

    part, report = collect(tmp_path / "part", stop_after=2)
    with pytest.raises(Stop):
        run_trial(cfg, tmp_path / "b", report, log=lambda _: None)
    rest, report = collect(tmp_path / "rest")
    # a fresh folder on another machine: only the reported folder travels
    result = run_trial(cfg, tmp_path / "elsewhere", report, restore_from=tmp_path / "part" / "report_2",
                       log=lambda _: None)
    assert result.step == full[-1][M.STEP] == 9
    assert [r[M.STEP] for r in part + rest] == [r[M.STEP] for r in full]
    for a, b in zip(full[2:], rest):
        for key in (M.BLEU, M.LOSS, M.L0, M.OPEN_HEADS, M.VALID_NLL):
            assert a[key] == b[key], key
    sa = load_checkpoint(checkpoint_file(tmp_path / "full" / "report_3"))["model"]
    sb = load_checkpoint(checkpoint_file(tmp_path / "rest" / "report_1"))["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    lines = (tmp_path / "elsewhere" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)[M.STEP] for ln in lines] == [3, 6, 9]  # the history came along


def test_a_fresh_start_discards_what_was_never_reported(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000003.pt").write_bytes(b"left by a killed attempt")
    reports, report = collect(tmp_path / "store")
    run_trial(tiny_config(*GATED, "train.max_steps=3"), run, report, log=lambda _: None)
    assert [r[M.STEP] for r in reports] == [3]
    load_checkpoint(run / "checkpoints" / "step_00000003.pt")  # the new one, readable


def test_a_diverged_trial_reports_without_a_checkpoint(tmp_path: Path):
    reports, report = collect(tmp_path / "store")
    result = run_trial(tiny_config(*GATED, "train.lr=1e30", "train.grad_clip=null"), tmp_path / "run", report,
                       log=lambda _: None)
    assert result.status == "diverged"
    assert reports[-1][M.STATUS] == "diverged"
