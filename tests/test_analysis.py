"""Analysis of a real (smoke) sweep's results: loading, charts with the expected points and frames, the report."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from analysis import charts
from analysis.load import ResultsError, load_sweep, load_sweeps, trial_gates, trial_history
from analysis.pareto import pareto_front
from analysis.report import main as report_main


@pytest.fixture(scope="module")
def sweep_dir(quickstart_smoke) -> Path:
    """The quickstart sweep's smoke test (2 trials x 2 evaluations, a base model), run through the real command.
    It writes the report at its end, as every sweep does."""
    proc, root = quickstart_smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report: " in proc.stdout
    return root / "quickstart-smoke"


def test_load_reads_the_table_and_the_objectives(sweep_dir: Path):
    s = load_sweep(sweep_dir)
    assert s.label == "quickstart-smoke" and (s.trials["sweep"] == s.label).all()
    assert len(s.completed) == 2 and len(s.bases) == 1
    assert s.objectives == ["bleu", "open_heads"] and s.directions == ["max", "min"]
    assert {"param.gates.penalty", "param.train.lr", "param.data.max_tokens"} <= set(s.params)
    row = s.completed.iloc[0]
    assert list(trial_history(row)["step"]) == [5, 10]
    assert [r["step"] for r in trial_gates(row)] == [5, 10]


def test_without_the_table_rays_folders_are_read(sweep_dir: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    (copy / "trials.csv").unlink()
    s = load_sweep(copy)
    assert len(s.completed) == 2 and set(s.completed["trial_id"]) == set(load_sweep(sweep_dir).completed["trial_id"])
    with pytest.raises(ResultsError, match="neither trials.csv nor Ray trial folders"):
        load_sweep(tmp_path)
    with pytest.raises(ResultsError, match="share a label"):
        load_sweeps([sweep_dir, copy])


def test_pareto_chart_has_every_trial_the_front_and_the_base(sweep_dir: Path, tmp_path: Path):
    s = load_sweep(sweep_dir)
    fig, pfig = charts.pareto_chart([s])
    traces = {t.name: t for t in pfig.data}
    assert len(traces[f"{s.label} trials"].x) == 2
    front = pareto_front(s.completed, s.objectives, s.directions)
    assert len(traces[f"{s.label} Pareto front ({len(front)})"].x) == len(front)
    assert len(traces[f"{s.label} base model"].x) == 1
    assert "gates.penalty" in traces[f"{s.label} trials"].hovertext[0]
    png, html = charts.save((fig, pfig), tmp_path, "pareto")
    assert Image.open(png).size[0] > 400 and (tmp_path / "plotly.min.js").exists()
    # several sweeps: one trial trace and one front per sweep
    other = load_sweep(sweep_dir, label="again")
    _, pfig = charts.pareto_chart([s, other])
    assert sum(t.name.endswith("trials") for t in pfig.data) == 2


def test_gate_heatmap_and_every_evaluation_in_the_gif(sweep_dir: Path, tmp_path: Path):
    s = load_sweep(sweep_dir)
    records = trial_gates(s.completed.iloc[0])
    fig, pfig = charts.gate_heatmap(records[-1])
    assert [a.get_title().split()[0] for a in fig.axes] == ["enc_self", "dec_self", "dec_cross"]  # a panel per type
    assert len(pfig.data) == 3 and pfig.data[0].z.shape == (2, 4)  # layers x heads of the tiny model
    # identical frames must not be merged away: every evaluation is a frame
    gif = charts.gate_evolution_gif([records[0]] * 3 + records, tmp_path / "g.gif")
    assert Image.open(gif).n_frames == 3 + len(records)


def test_attention_maps_of_the_remaining_heads(sweep_dir: Path):
    from analysis.attention import attention_chart, attention_maps
    from sweeps.results import checkpoint_file

    s = load_sweep(sweep_dir)
    row = s.completed.iloc[0]
    maps = attention_maps(checkpoint_file(row["checkpoint"]), "The big dog sees a small cat.")
    assert len(maps.weights) == 6  # 2 layers x 3 attention types
    for (kind, _), w in maps.weights.items():
        queries = len(maps.source) if kind == "enc_self" else len(maps.target)
        keys = len(maps.source) if kind != "dec_self" else len(maps.target)
        assert w.shape == (4, queries, keys)
        assert np.allclose(w.sum(-1), 1.0, atol=1e-5)  # probabilities
        if kind == "dec_self":
            assert np.all(np.triu(w, 1) == 0)  # no look at the future
    closed = ("enc_self", 0)
    maps.gates[closed] = np.array([0.0, 0.5, 0.0, 1.0])  # two heads of this layer pruned
    fig, pfig = attention_chart(maps)
    assert len(pfig.data) == 6 * 4 - 2  # a panel per remaining head only
    assert "the 22 remaining heads" in fig._suptitle.get_text()
    fig, pfig = attention_chart(maps, max_heads=9)  # past the cap: whole layers, and the title says so
    assert len(pfig.data) == 2 + 4 and "6 of the 22 remaining heads" in pfig.layout.title.text
    assert sum(ax.has_data() for ax in fig.axes) == 6


def test_learning_curves_draw_a_line_per_trial_and_metric(sweep_dir: Path):
    s = load_sweep(sweep_dir)
    histories = {str(r["trial_id"]): trial_history(r) for _, r in s.completed.iterrows()}
    _, pfig = charts.learning_curves(histories)
    assert len(pfig.data) == 2 * len(charts.CURVE_METRICS)


def test_layer_chart_has_a_line_per_gated_layer_with_a_point_per_trial(sweep_dir: Path):
    s = load_sweep(sweep_dir)
    _, pfig = charts.layer_chart(s)
    gated = charts.layer_columns(s.completed)
    assert list(gated) == ["enc_self", "dec_self", "dec_cross"]  # quickstart gates every attention type
    columns = [(kind, col) for kind, cols in gated.items() for col in cols]
    assert len(pfig.data) == len(columns) == 6  # smoke model: 2 layers of each
    for trace, (kind, col) in zip(pfig.data, columns):
        totals = s.completed[gated[kind]].sum(axis=1)
        assert sorted(zip(trace.x, trace.y)) == sorted(zip(totals, s.completed[col]))
    assert "layers.html" in {p.name for p in (sweep_dir / "report").iterdir()}
    no_layers = load_sweep(sweep_dir)
    no_layers.trials = no_layers.trials.drop(columns=[c for cols in gated.values() for c in cols])
    assert charts.layer_chart(no_layers) is None


def test_optuna_importance_and_parallel_coordinates_per_objective(sweep_dir: Path):
    charts_ = charts.study_charts(f"sqlite:///{sweep_dir / 'optuna.db'}", "quickstart-smoke", ["bleu", "open_heads"])
    assert set(charts_) == {"importance_bleu", "importance_open_heads", "parallel_bleu", "parallel_open_heads"}
    data = charts_["parallel_bleu"][1].data
    axes = {"bleu", "gates.penalty", "train.lr", "data.max_tokens"}
    lines = [t for t in data if getattr(t, "mode", None) == "lines"]
    if lines:  # Optuna >= 4.x draws each trial as a line across the axes
        assert len(lines) == 2  # a line per finished trial, across bleu and the three parameters
        assert {c[0] for c in lines[0].customdata} == axes
    else:  # Optuna 4.0 (the floor) draws one Parcoords trace
        (parcoords,) = [t for t in data if t.type == "parcoords"]
        assert {d.label for d in parcoords.dimensions} == axes
        assert all(len(d.values) == 2 for d in parcoords.dimensions)  # the two finished trials


class Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.open = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br", "link", "input"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_report_is_one_self_contained_html_file(sweep_dir: Path):
    report = sweep_dir / "report" / "report.html"
    text = report.read_text()
    parser = Structure()
    parser.feed(text)
    assert parser.open == []  # every element closed
    scripts = [a for t, a in parser.tags if t == "script"]
    assert scripts and not any("src" in a for a in scripts)  # plotly.js inline: no file or network needed
    imgs = [a["src"] for t, a in parser.tags if t == "img"]
    assert imgs and all(src.startswith("data:image/gif;base64,") for src in imgs)
    assert "Pareto front" in text and "Learning curves" in text and "Base models" in text
    (run,) = (sweep_dir / "wandb" / "wandb").glob("offline-run-*-summary")  # the sweep's W&B summary run
    assert {p.name.split("_")[0] for p in (run / "files" / "media" / "images").glob("*.png")} >= {"pareto", "curves"}
    summary = (sweep_dir / "report" / "report.md").read_text()
    assert "Pareto-optimal of 2 completed trials" in summary and "| trial_id |" in summary


def test_report_command_compares_sweeps(sweep_dir: Path, tmp_path: Path):
    assert report_main([str(sweep_dir), str(sweep_dir), "--labels", "a", "b", "--out", str(tmp_path)]) == 0
    compare = (tmp_path / "compare.html").read_text()
    assert "hypervolume" in compare.lower() and ">a<" in compare and ">b<" in compare
    assert report_main([str(tmp_path / "nothing")]) == 2


def test_methods_are_compared_while_one_has_no_reported_trial(tmp_path: Path):
    """A sweep's methods run one after another: when a sweep stops while a method's first trials have reported
    nothing yet, that method's folder holds Ray's trial folders without a score column. The comparison of the
    methods still comes out, with that method at 0 completed trials, instead of failing on the missing column."""
    import json

    from analysis.report import compare_report
    from model import metrics as M
    from sweeps.results import PRUNE, STAGE, STATUS, SWEEP_FILE, TRIAL_ID, TRIALS_FILE

    config = {"objectives": [{"metric": M.BLEU, "mode": "max"}, {"metric": M.OPEN_HEADS, "mode": "min"}]}
    done, waiting = tmp_path / "done", tmp_path / "waiting"
    for folder in (done, waiting):
        folder.mkdir()
        (folder / SWEEP_FILE).write_text(json.dumps(config))
    pd.DataFrame({TRIAL_ID: ["a", "b"], STAGE: PRUNE, STATUS: M.COMPLETED, M.BLEU: [30.0, 25.0],
                  M.OPEN_HEADS: [12, 3]}).to_csv(done / TRIALS_FILE, index=False)
    trial = waiting / "trial_00000"  # started, nothing reported: an empty result.json
    trial.mkdir()
    (trial / "result.json").write_text("")
    (trial / "params.json").write_text(json.dumps({"baseline.budget": 3}))
    sweeps = load_sweeps([done, waiting], ["done", "waiting"])
    assert sweeps[1].completed.empty and M.BLEU in sweeps[1].trials.columns
    page = compare_report(sweeps, tmp_path / "out", stem="methods").read_text()
    cells = [c.split("</td>")[0] for c in page.split("<td>")[1:]]
    assert cells[:3] == ["done", "2", "2"] and cells[5:8] == ["waiting", "0", "0"], cells
    assert (tmp_path / "out" / "methods.png").exists()


@pytest.mark.parametrize("start", ["", "analysis"], ids=["from the repository root", "from analysis/"])
def test_the_notebook_runs_on_a_sweep(sweep_dir: Path, monkeypatch, start: str):
    """Executed as Jupyter would, started in the repository root or in analysis/, on a relative results path:
    tables come out as HTML tables, charts as figures, and nothing fails."""
    import jupytext
    from nbclient import NotebookClient

    from tests.helpers import REPO

    link = REPO / "results" / f"notebook-test-{os.getpid()}"  # a relative path, as a user writes it
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(sweep_dir, target_is_directory=True)
    try:
        monkeypatch.setenv("HEADSWEEP_RESULTS", str(link.relative_to(REPO)))
        notebook = jupytext.read(REPO / "analysis" / "pareto_notebook.py")
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / start)}}).execute()
    finally:
        link.unlink()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}) and "<table" in
              o["data"]["text/html"]]
    assert len(tables) >= 3 and "2</td>" in tables[0]  # the sweeps, the front, the hypervolumes: as tables
    assert any("hypervolume" in t for t in tables)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the gate heatmap drawn inline
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)  # the Pareto chart


def test_the_notebook_and_the_export_read_a_sweep_from_s3(sweep_dir: Path, s3_server, tmp_path: Path, monkeypatch):
    """The sweep uploaded to an S3 server with its table naming s3:// checkpoints (as a sweep on S3 writes it), the
    local folder then moved away: the notebook and `headsweep export` read everything from the bucket."""
    import jupytext
    from nbclient import NotebookClient

    from analysis.export import main as export_main
    from sweeps.storage import upload
    from tests.helpers import REPO

    uri = s3_server.uri("notebook", sweep_dir.name)
    moved = tmp_path / "moved"
    shutil.copytree(sweep_dir, moved)
    table = pd.read_csv(moved / "trials.csv")
    prefix = str(sweep_dir)
    for column in ("checkpoint", "trial_path"):
        table[column] = [v.replace(prefix, uri) if isinstance(v, str) and v.startswith(prefix) else v
                         for v in table[column]]
    table.to_csv(moved / "trials.csv", index=False)
    upload(moved, uri)
    shutil.rmtree(moved)  # nothing of the copy is left on this disk; the original's checkpoints are not named
    monkeypatch.setenv("HEADSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HEADSWEEP_RESULTS", uri)
    notebook = jupytext.read(REPO / "analysis" / "pareto_notebook.py")
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the gates, read from the bucket's checkpoint
    assert any(uri in o["data"].get("text/html", "") for o in outputs if "data" in o)  # the folder it read
    assert export_main([uri]) == 0
    pruned = [k for k in s3_server.keys(f"notebook/{sweep_dir.name}/pruned") if k.endswith(".pt")]
    front = pareto_front(load_sweep(uri).completed, ["bleu", "open_heads"], ["max", "min"])
    assert len(pruned) == len(front) > 0


def test_the_charts_leave_the_users_matplotlib_backend_alone():
    import subprocess
    import sys

    code = ("import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot as plt\n"
            "import analysis.charts, analysis.report, analysis.attention\n"
            "fig, _ = analysis.charts.figure_axes(1, 2)\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert plt.get_fignums() == [], plt.get_fignums()\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_charts_are_written_as_palette_pngs_that_look_the_same(tmp_path: Path):
    fig, ax = charts.figure_axes(1, 2, figsize=(8, 3))
    rng = np.random.default_rng(0)
    ax[0].imshow(rng.random((12, 12)), cmap="Blues", vmin=0, vmax=1)  # a colour map: an attention panel
    for i in range(8):
        ax[1].plot(np.cumsum(rng.normal(size=50)), label=f"trial {i}")  # antialiased lines and text
    ax[1].legend(fontsize=6)
    full = io.BytesIO()
    fig.savefig(full, format="png", dpi=120, bbox_inches="tight")
    png, _ = charts.save((fig, go.Figure()), tmp_path, "chart")
    with Image.open(png) as small, Image.open(full) as big:
        assert small.mode == "P" and small.size == big.size
        assert png.stat().st_size < 0.75 * len(full.getvalue())
        diff = np.abs(np.asarray(small.convert("RGB"), float) - np.asarray(big.convert("RGB"), float))
        assert diff.mean() < 1.0 and np.percentile(diff.max(-1), 99) < 32  # at most a faint fringe differs
    clear = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(clear, format="PNG")  # transparency: kept as it is
    assert charts.compact_png(clear.getvalue()) == clear.getvalue()


def test_the_front_exports_as_pruned_models_that_translate_like_their_trials(sweep_dir: Path, tmp_path: Path):
    import torch

    from analysis.export import main as export_main
    from model.translate import load_for_inference
    from sweeps.results import checkpoint_file

    assert export_main([str(sweep_dir), "--out", str(tmp_path)]) == 0
    s = load_sweep(sweep_dir)
    front = pareto_front(s.completed, s.objectives, s.directions)
    assert sorted(p.stem for p in tmp_path.glob("*.pt")) == sorted(front["trial_id"].astype(str))
    trial = front.iloc[0]
    gated, tok = load_for_inference(str(checkpoint_file(trial["checkpoint"])))
    pruned, _ = load_for_inference(str(tmp_path / f"{trial['trial_id']}.pt"))
    src = torch.tensor(tok.src.encode(["The big dog sees a small cat that sleeps."]))
    with torch.no_grad():
        assert torch.allclose(gated.encode(src)[0], pruned.encode(src)[0], atol=1e-5)
    assert pruned.open_heads()["total"] == gated.open_heads()["total"] == trial["open_heads"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_browser_draws_the_report(sweep_dir: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", "--virtual-time-budget=5000",
                    f"--screenshot={shot}", (sweep_dir / "report" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert image.size == (1200, 1600) and len(colours) > 50  # text and a drawn chart, not a blank page
    # the chart area holds the front's colour (plotly draws it in a <svg> only when its script ran)
    pixels = pd.Series([c for _, c in colours])
    assert any(abs(r - 31) < 30 and abs(g - 119) < 30 and abs(b - 180) < 30 for r, g, b in pixels)
