"""A finished method folder kept as a record (sweeps.record): Tune's and W&B's internals go, the trials' logs and the
test cache stay readable by analysis, an unfinished folder is refused untouched, a resumed sweep skips a record; the
shipped Multi30k record is slim and regenerates its comparison byte for byte wherever it is cloned."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import load_sweep, trial_gates, trial_history, trial_samples
from analysis.testset import cached_score
from sweeps.record import KEPT, RecordError, main, record_folder
from sweeps.results import RECORD_FILE, TEST_DIR, TEST_PACK_FILE, TRIAL_LOGS_FILE, is_record, read_test_pack
from tests.helpers import REPO

EXPERIMENTS = REPO / "docs" / "experiments"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _trial(folder: Path, name: str, steps: list[int]) -> Path:
    """A Ray trial folder with two kept checkpoints (the last one's logs are the trial's), weights and Tune files."""
    trial = folder / name
    for n, upto in enumerate((steps[:-1], steps)):
        ckpt = trial / f"checkpoint_00000{n}"
        ckpt.mkdir(parents=True)
        (ckpt / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "bleu": s / 10}) + "\n" for s in upto))
        (ckpt / "gates.jsonl").write_text("".join(json.dumps({"step": s, "gates": {"enc_self": {"gate": [[1.0]]}}})
                                                  + "\n" for s in upto))
        (ckpt / "samples.jsonl").write_text(json.dumps({"step": upto[-1], "samples": [{"source": name}]}) + "\n")
        (ckpt / f"step_{upto[-1]:08d}.pt").write_bytes(b"weights")
    for extra in ("result.json", "progress.csv", "params.pkl", "events.out.tfevents.1.vm"):
        (trial / extra).write_text("tune")
    return trial / "checkpoint_000001"


def finished_folder(root: Path, statuses=("completed", "diverged")) -> Path:
    """A method folder as a finished sweep leaves it, its checkpoint paths recorded where it first ran."""
    folder = root / "first" / "sweep"
    rows = []
    for i, status in enumerate(statuses):
        ckpt = _trial(folder, f"prune_trainable_t{i}_{i}", [5, 10 + i])
        rows.append({"trial_id": f"t{i}", "stage": "prune", "status": status, "bleu": 1.0 + i, "open_heads": 4 - i,
                     "checkpoint": str(ckpt), "trial_path": str(ckpt.parent)})
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.json").write_text(json.dumps({"name": "sweep"}))
    (folder / "finished.json").write_text(json.dumps({"trials": len(rows), "expected": len(rows)}))
    (folder / "optuna.db").write_bytes(b"study")
    (folder / TEST_DIR).mkdir()
    for i in range(2):  # the references both trials were scored against
        (folder / TEST_DIR / f"t{i}.json").write_text(json.dumps(
            {"trial_id": f"t{i}", "hypotheses": [f"ein Hund {i}"], "references_sha256": "f00d",
             "references": ["ein Hund"]}, ensure_ascii=False) + "\n")
    (folder / "report").mkdir()
    (folder / "report" / "report.md").write_text("# report\n")
    for state in ("experiment_state-2026-12-04_14-40-37.json", "search_gen_state-1.json", "tuner.pkl"):
        (folder / state).write_text("{}")
    (folder / "wandb" / "offline-run-1").mkdir(parents=True)
    (folder / "wandb" / "offline-run-1" / "run.wandb").write_bytes(b"w")
    return folder


def test_a_finished_folder_keeps_what_analysis_reads_and_loses_the_internals(tmp_path, capsys):
    folder = finished_folder(tmp_path)
    before = load_sweep(folder)
    expected = {t: (trial_history(r).to_dict("list"), trial_gates(r), trial_samples(r))
                for t, r in before.prune.set_index("trial_id", drop=False).iterrows()}
    cached = json.loads((folder / TEST_DIR / "t0.json").read_bytes())
    tree = _tree(folder)
    assert main([str(folder), "--dry-run"]) == 0 and _tree(folder) == tree  # says what would go, changes nothing
    assert "would remove" in capsys.readouterr().out

    moved = tmp_path / "clone" / "sweep"  # recorded in one place, read in another (a clone of the repository)
    summary = record_folder(folder)
    shutil.move(folder, moved)
    assert is_record(moved) and sorted(p.name for p in moved.iterdir()) == sorted(
        {"trials.csv", "sweep.json", "finished.json", "optuna.db", TEST_DIR, "report", TRIAL_LOGS_FILE, RECORD_FILE})
    assert set(p.name for p in moved.iterdir()) <= set(KEPT)
    # a constrained sweep's bounds and MO-ASHA's rung records are results too: a record keeps them
    other = finished_folder(tmp_path / "other")
    for name in ("constraints.json", "scheduler.json"):
        (other / name).write_text('{"kept": true}')
    record_folder(other)
    assert all(json.loads((other / n).read_text()) == {"kept": True} for n in ("constraints.json", "scheduler.json"))
    assert summary["trials"] == 2 and summary["test_files_compressed"] == 2
    assert "wandb/" in summary["removed"] and "tuner.pkl" in summary["removed"]
    assert json.loads((moved / RECORD_FILE).read_text())["removed_files"] == summary["removed_files"] == 28
    # the trials' test files gathered into one, without the references they share, which are kept once
    assert sorted(p.name for p in (moved / TEST_DIR).iterdir()) == ["references-f00d.json.gz", TEST_PACK_FILE]
    packed = dict(read_test_pack(moved / TEST_DIR / TEST_PACK_FILE))
    assert sorted(packed) == ["t0", "t1"] and "references" not in packed["t0"]
    assert {**packed["t0"], "references": ["ein Hund"]} == cached
    assert json.loads(gzip.decompress((moved / TEST_DIR / "references-f00d.json.gz").read_bytes())) == ["ein Hund"]
    assert cached_score(moved / TEST_DIR, "t0") == cached and cached_score(moved / TEST_DIR, "t9") is None
    after = load_sweep(moved)
    for trial_id, row in after.prune.set_index("trial_id", drop=False).iterrows():
        assert (trial_history(row).to_dict("list"), trial_gates(row), trial_samples(row)) == expected[trial_id]
    assert list(trial_history(after.prune.iloc[1])["step"]) == [5, 11]  # the last checkpoint's log, not the first
    with pytest.raises(RecordError, match="already a record"):
        record_folder(moved)


def test_the_test_cache_of_a_record_is_read_compressed(tmp_path, monkeypatch):
    import model.evaluate
    from analysis.testset import score_row

    monkeypatch.setattr(model.evaluate, "evaluate_checkpoint", lambda *a, **k: pytest.fail("scored again"))
    folder = tmp_path / "test"
    folder.mkdir()
    found = {"checkpoint": "/elsewhere/prune_trainable_t0/checkpoint_000001", "split": "test", "beam": 5,
             "max_sentences": None, "trial_id": "t0", "bleu": 31.5, "hypotheses": ["ein Hund"],
             "references_sha256": "f00d", "references": ["ein Hund"]}
    (folder / "t0.json.gz").write_bytes(gzip.compress(json.dumps(found).encode()))
    row = pd.Series({"trial_id": "t0", "checkpoint": "/work/x/prune_trainable_t0/checkpoint_000001"})
    assert score_row(row, folder, beam=5, batch_size=8)["bleu"] == 31.5


def test_a_record_made_before_the_test_pack_is_repacked_and_reads_the_same(tmp_path, monkeypatch):
    """--repack: a record's compressed test files, each holding the references, are gathered into one pack and the
    references kept once; scoring reads each trial as before; a second repack changes nothing; a missing
    references file is an error naming it, never a silent rescoring."""
    import model.evaluate
    from analysis.testset import ScoringError, score_row

    monkeypatch.setattr(model.evaluate, "evaluate_checkpoint", lambda *a, **k: pytest.fail("scored again"))
    folder = tmp_path / "sweep"
    (folder / TEST_DIR).mkdir(parents=True)
    (folder / RECORD_FILE).write_text("{}")
    refs = [f"ein Hund läuft über die Wiese Nummer {i}" for i in range(200)]
    found = {}
    for i in range(3):
        found[f"t{i}"] = {"checkpoint": f"/elsewhere/prune_trainable_t{i}/checkpoint_000001", "split": "test",
                          "beam": 5, "max_sentences": None, "trial_id": f"t{i}", "bleu": 30.0 + i,
                          "hypotheses": [f"ein Hund {i}"] * 200, "references_sha256": "beef",
                          "references": refs}
        (folder / TEST_DIR / f"t{i}.json.gz").write_bytes(gzip.compress(json.dumps(found[f"t{i}"]).encode()))
    size = sum(p.stat().st_size for p in (folder / TEST_DIR).iterdir())
    assert main([str(tmp_path), "--all", "--repack"]) == 0
    tree = _tree(folder)
    assert main([str(folder), "--repack"]) == 0 and _tree(folder) == tree  # packed already: nothing changes
    assert sorted(p.name for p in (folder / TEST_DIR).iterdir()) == ["references-beef.json.gz", TEST_PACK_FILE]
    assert sum(p.stat().st_size for p in (folder / TEST_DIR).iterdir()) < size / 2
    for trial, expected in found.items():
        row = pd.Series({"trial_id": trial, "checkpoint": f"/work/x/prune_trainable_{trial}/checkpoint_000001"})
        assert score_row(row, folder / TEST_DIR, beam=5, batch_size=8) == expected
    (folder / TEST_DIR / "references-beef.json.gz").unlink()
    row = pd.Series({"trial_id": "t0", "checkpoint": "/work/x/prune_trainable_t0/checkpoint_000001"})
    with pytest.raises(ScoringError, match=r"scores.jsonl.gz: the reference translations of trial t0 are kept in "
                                           r".*references-beef.json.gz, which cannot be read"):
        score_row(row, folder / TEST_DIR, beam=5, batch_size=8)


def test_an_unfinished_or_incomplete_folder_is_refused_and_left_as_it_is(tmp_path, capsys):
    folder = finished_folder(tmp_path, statuses=("completed", "running"))
    tree = _tree(folder)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert "1 trial(s) did not finish: t1 (running)" in err and "--resume" in err and str(folder) in err
    assert _tree(folder) == tree
    assert main([str(tmp_path), "--all"]) == 0 and _tree(folder) == tree  # --all skips it, and says so
    assert "skipped: " in capsys.readouterr().err
    shutil.rmtree(folder / "prune_trainable_t0_0")  # a finished table whose trial folder is gone
    folder2 = finished_folder(tmp_path / "b")
    shutil.rmtree(folder2 / "prune_trainable_t1_1")
    tree = _tree(folder2)
    with pytest.raises(RecordError, match="trial t1: its checkpoint folder .* is not in"):
        record_folder(folder2)
    assert _tree(folder2) == tree
    with pytest.raises(RecordError, match="holds no trials.csv"):
        record_folder(tmp_path / "first")
    # every row finished, but the sweep stopped before all its trials started: the driver never marked it finished
    folder3 = finished_folder(tmp_path / "c")
    (folder3 / "finished.json").unlink()
    tree = _tree(folder3)
    with pytest.raises(RecordError, match="holds no finished.json: its sweep has not finished this method"):
        record_folder(folder3)
    assert _tree(folder3) == tree


def test_a_resumed_sweep_counts_a_record_as_started_and_finished(tmp_path):
    from sweeps.resume import SweepError, check_resume, sweep_record
    from tests.helpers import tiny_sweep

    sweep = tiny_sweep(storage=str(tmp_path))
    with pytest.raises(SweepError, match="no sweep in"):
        check_resume(sweep, resume=True)
    folder = finished_folder(tmp_path)
    (folder / "sweep.json").write_text(json.dumps(sweep_record(sweep, sweep.method_runs()[0])))
    shutil.move(folder, tmp_path / "t")
    record_folder(tmp_path / "t")
    check_resume(sweep, resume=True)  # a record is something to resume (its later methods)
    changed = tiny_sweep({"prune": {"set": {"gates.mode": "learned", "train.max_steps": 7}}}, storage=str(tmp_path))
    with pytest.raises(SweepError, match="prune.set.train.max_steps: 6 -> 7"):  # and its sweep is still checked
        check_resume(changed, resume=True)
    with pytest.raises(SweepError, match="already holds a sweep"):
        check_resume(sweep, resume=False)


def test_a_moved_sweep_folder_reads_its_trials_logs_where_it_lies_now(tmp_path):
    folder = finished_folder(tmp_path)
    moved = tmp_path / "copy" / "sweep"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    row = load_sweep(moved).prune.iloc[0]
    assert list(trial_history(row)["step"]) == [5, 10] and trial_samples(row) == [{"source": "prune_trainable_t0_0"}]


def _tracked(folder: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", str(folder.relative_to(REPO))], cwd=REPO, capture_output=True,
                         check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


def test_the_shipped_experiment_record_is_slim():
    files = _tracked(EXPERIMENTS)
    size = sum((REPO / f).stat().st_size for f in files)
    assert len(files) <= 300 and size <= 8 * 2**20, f"docs/experiments tracks {len(files)} files, {size} bytes"
    tables = [REPO / f for f in files if f.endswith("/trials.csv")]
    unrecorded = [str(t.parent.relative_to(REPO)) for t in tables if not is_record(t.parent)]
    assert tables and not unrecorded, f"finished method folders kept whole: python -m sweeps.record {unrecorded}"


@pytest.mark.slow
def test_the_multi30k_comparison_regenerates_byte_for_byte_from_the_tracked_files(tmp_path):
    """From a copy of what a clone holds, at another path, without the base model's weights or the corpus."""
    from analysis.testset import main as testset_main

    record = EXPERIMENTS / "multi30k"
    copy = tmp_path / "clone" / "multi30k"
    for name in _tracked(record):
        target = copy / Path(name).relative_to(record.relative_to(REPO))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    report = copy / "multi30k_en_de" / "report"
    generated = sorted(p.name for p in report.glob("*") if p.suffix in (".md", ".csv") and p.name != "report.md")
    before = {name: (report / name).read_bytes() for name in generated}
    for name in generated:
        (report / name).unlink()
    assert testset_main([str(copy / "multi30k_en_de"), "--data-dir", str(tmp_path / "no-corpus")]) == 0
    assert "comparison.md" in before
    changed = [name for name in generated if (report / name).read_bytes() != before[name]]
    assert not changed, f"regenerated differently: {changed}"
    assert _tree(copy / "multi30k_en_de" / TEST_DIR) == _tree(record / "multi30k_en_de" / TEST_DIR)  # no rescoring
