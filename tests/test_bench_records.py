"""Benchmark recordings (docs/bench/*.json, written by bench/record.py) are whole, their Markdown is what the
recorder renders, their figures are the ones the output printed, and a docs page quotes every one of them; the
recorder keeps a failed run out."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

RECORDINGS = sorted((REPO / "docs" / "bench").glob("*.json"))
KEYS = {"name", "date", "commit", "dirty", "machine", "command", "wall_seconds", "figures", "output"}


def _recorder():
    spec = importlib.util.spec_from_file_location("record", REPO / "bench" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_recordings():
    assert len(RECORDINGS) >= 8, [p.name for p in RECORDINGS]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_a_recording_is_whole_and_its_page_is_what_the_recorder_renders(path: Path):
    recorder = _recorder()
    recording = json.loads(path.read_text(encoding="utf-8"))
    assert KEYS <= set(recording), KEYS - set(recording)
    assert recording["name"] == path.stem and re.fullmatch(r"[0-9a-f]{40}", recording["commit"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", recording["date"])
    assert {"cpu", "cores", "torch", "load_average_1min"} <= set(recording["machine"])
    # a benchmark script, or a series of sweeps (bench/early_stop.sh), as the recorder ran it
    assert re.match(r"^(HEADSWEEP_DATA=\S+ )?(python bench/\w+\.py|bash bench/\w+\.sh)", recording["command"]), \
        recording["command"]
    assert recording["figures"] == recorder.figures(recording["output"]) and recording["figures"]
    assert path.with_suffix(".md").read_text(encoding="utf-8") == recorder.render(recording)
    quoted = [p for p in (REPO / "docs").rglob("*.md")
              if f"bench/{path.stem}.md by python -m analysis.writeup -->" in p.read_text(encoding="utf-8")]
    assert quoted, f"no docs page quotes docs/bench/{path.stem}.md"


def test_figures_are_the_name_value_lines_and_a_failed_benchmark_is_not_recorded(tmp_path: Path, monkeypatch):
    recorder = _recorder()
    assert recorder.figures("x 1.5\nspeedup=1.25\nnot a=figure\nratio=-3e-2\nspeedup=1.5\n") == {
        "speedup": 1.5, "ratio": -0.03}
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "fails.py").write_text("print('speedup=9.9'); raise SystemExit(3)\n")
    (bench / "plain.py").write_text("print('no figure here')\n")
    (bench / "fine.py").write_text("import sys; print('args', sys.argv[1:]); print('speedup=2.0')\n")
    monkeypatch.setattr(recorder, "REPO", tmp_path)
    monkeypatch.setattr(recorder, "RECORDINGS", tmp_path / "docs" / "bench")
    assert recorder.main(["fails"]) == 3 and recorder.main(["plain"]) == 2
    assert not (tmp_path / "docs" / "bench").exists()
    assert recorder.main(["fine", "--as", "fine_2", "--", "--threads", "2"]) == 0
    saved = json.loads((tmp_path / "docs" / "bench" / "fine_2.json").read_text())
    assert saved["figures"] == {"speedup": 2.0} and "args ['--threads', '2']" in saved["output"]
    assert saved["command"] == "python bench/fine.py --threads 2" and saved["machine"]["cores"] >= 1
    assert (tmp_path / "docs" / "bench" / "fine_2.md").read_text().endswith(
        "$ python bench/fine.py --threads 2\nargs ['--threads', '2']\nspeedup=2.0\n```\n")
    # a series of sweeps is a shell script, given the recorder's Python as $PYTHON
    (bench / "series.sh").write_text('echo "seeds $1"; "$PYTHON" -c "print(\'ratio=0.5\')"\n')
    assert recorder.main(["series", "--", "5"]) == 0
    saved = json.loads((tmp_path / "docs" / "bench" / "series.json").read_text())
    assert saved["figures"] == {"ratio": 0.5} and saved["command"] == "bash bench/series.sh 5"
    assert "seeds 5" in saved["output"]


def test_the_overhead_bench_splits_the_time_outside_the_trials_by_where_it_lies():
    spec = importlib.util.spec_from_file_location("sweep_overhead", REPO / "bench" / "sweep_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # driver 0..100 s; base model 10..40; prune trials two at a time: 45..70 and 47..65, then 66..90 in the freed slot
    spans = {"pretrain": [(10.0, 40.0)], "prune": [(45.0, 70.0), (47.0, 65.0), (66.0, 90.0)]}
    out = bench.outside(spans, 0.0, 100.0, concurrency=2)
    # slots over 45..90: 90 slot-seconds, busy 25 + 18 + 24 = 67, so 23 idle slot-seconds = 11.5 wall seconds
    assert out == {"before": 10.0, "base_to_prune": 5.0, "idle_slots": 11.5, "after": 10.0}
    # the parts and the trials' own time add up to the wall time whenever the slots are the only concurrency
    assert sum(out.values()) + 30.0 + 67 / 2 == 100.0
