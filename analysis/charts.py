"""Charts of a sweep: each function returns a matplotlib figure (for PNG) and a plotly figure (for HTML).

1. ``pareto_chart``: open heads against BLEU for every trial, the Pareto front as a step line, points coloured by
   lambda (one sweep) or by sweep (several), base models as stars; hover shows the trial's params.
2. ``gate_heatmap``: one evaluation's gates, a panel per attention type, layers x heads.
3. ``gate_evolution_gif``: those heatmaps for every evaluation of a trial, one GIF frame each.
4. ``learning_curves``: loss, BLEU, lr, L0 and open heads against step, a line per trial.
5. ``study_charts``: Optuna's parameter importances per objective and parallel coordinates.
6. ``layer_chart``: open heads of each layer against all open heads, one point per trial: which layers lose
   their heads first as lambda grows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from PIL import Image
from plotly.subplots import make_subplots

from model import metrics as M
from model.config import ATTENTION_TYPES
from model.files import atomic_write
from sweeps.constraints import FEASIBLE
from sweeps.results import BASE, STATUS, STOPPED, TRIAL_ID

from .load import SweepResults
from .pareto import pareto_front

LAMBDA = "param.gates.penalty"
CURVE_METRICS = (M.LOSS, M.BLEU, M.LR, M.L0, M.OPEN_HEADS)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22", "#aec7e8", "#ffbb78")


def figure_axes(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None,
                squeeze: bool = True):
    """A matplotlib figure and its axes, outside pyplot: no backend is chosen or changed, no window opens, and
    nothing is left for a notebook to draw twice (the user's session keeps its own backend)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(figures: tuple[Figure, go.Figure], folder: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.html`` (with plotly.min.js beside it: opens offline); returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig, pfig = figures
    png, html = folder / f"{stem}.png", folder / f"{stem}.html"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write(png, compact_png(buf.getvalue()))
    plt.close(fig)  # Optuna's charts are pyplot figures; ours are not, and closing them is a no-op
    pfig.write_html(html, include_plotlyjs="directory", full_html=True)  # plotly.min.js once, beside: offline
    return png, html


def compact_png(data: bytes) -> bytes:
    """An opaque PNG as a 256-colour palette PNG where that is smaller (about half the size for these charts:
    matplotlib's colour maps have 256 entries, and the antialiased edges of lines and text lose nothing a reader
    sees); a PNG with transparency, or one the palette does not shrink, comes back as it was."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("RGB", "RGBA") or (im.mode == "RGBA" and im.getchannel("A").getextrema() != (255, 255)):
            return data
        palette = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        palette.save(out, format="PNG", optimize=True)
    return out.getvalue() if len(out.getvalue()) < len(data) else data


def _hover(row: pd.Series, params: Sequence[str], objectives: Sequence[str]) -> str:
    parts = [f"trial {row.get('trial_id')} ({row.get('sweep')})"]
    parts += [f"{o}: {row[o]:.4g}" for o in objectives]
    parts += [f"{p.removeprefix('param.')}: {row[p]:.4g}" if isinstance(row[p], float) else
              f"{p.removeprefix('param.')}: {row[p]}" for p in params if p in row and pd.notna(row[p])]
    return "<br>".join(parts)


def pareto_chart(sweeps: Sequence[SweepResults]) -> tuple[Figure, go.Figure]:
    """Open heads (x) against BLEU (y) for all completed trials of one or more sweeps, with their fronts. With a
    third objective (the speed-up, say) the axes are the first maximised and the first minimised objectives, and a
    single sweep's trials are coloured by the speed-up where the table has it (else by λ)."""
    first = sweeps[0]
    objectives, directions = first.objectives, first.directions
    pairs = list(zip(objectives, directions))
    if len(objectives) < 2 or not any(d == "max" for d in directions) or not any(d == "min" for d in directions):
        raise ValueError(f"a Pareto chart needs an objective to maximise and one to minimise; the sweep has "
                         f"{dict(pairs)}")
    # x: the objective to minimise (heads), y: the one to maximise (BLEU), whatever their order in the sweep
    (y, ydir), (x, xdir) = next(p for p in pairs if p[1] == "max"), next(p for p in pairs if p[1] == "min")
    fig, ax = figure_axes(figsize=(7.5, 4.8))
    pfig = go.Figure()
    single = len(sweeps) == 1
    for i, s in enumerate(sweeps):
        done, colour = s.completed, PALETTE[i % len(PALETTE)]
        hover = [_hover(r, s.params, objectives) for _, r in done.iterrows()]
        if single and M.SPEEDUP in done and M.SPEEDUP != y and done[M.SPEEDUP].notna().any():
            speed = done[M.SPEEDUP].astype(float)
            sc = ax.scatter(done[x], done[y], c=speed, cmap="plasma", s=36, edgecolor="k", lw=0.4, zorder=3,
                            label="trials")
            fig.colorbar(sc, ax=ax, label="speed-up over the base model (beam search)")
            marker = dict(color=speed, colorscale="Plasma", size=9, line=dict(width=0.5, color="black"),
                          colorbar=dict(title="speed-up"))
        elif single and LAMBDA in done and done[LAMBDA].notna().any():
            lam = done[LAMBDA].astype(float)
            norm = matplotlib.colors.LogNorm(vmin=max(lam.min(), 1e-12), vmax=max(lam.max(), 1e-12) * 1.0001)
            sc = ax.scatter(done[x], done[y], c=lam, cmap="viridis", norm=norm, s=36, edgecolor="k", lw=0.4,
                            zorder=3, label="trials")
            fig.colorbar(sc, ax=ax, label="λ (L0 penalty)")
            marker = dict(color=np.log10(lam), colorscale="Viridis", size=9, line=dict(width=0.5, color="black"),
                          colorbar=dict(title="log10 λ"))
        else:
            ax.scatter(done[x], done[y], color=colour, s=36, edgecolor="k", lw=0.4, zorder=3, label=f"{s.label}")
            marker = dict(color=colour, size=9, line=dict(width=0.5, color="black"))
        pfig.add_trace(go.Scatter(x=done[x], y=done[y], mode="markers", marker=marker, name=f"{s.label} trials",
                                  hovertext=hover, hoverinfo="text"))
        front = pareto_front(done, [x, y], [xdir, ydir]).sort_values(x)  # in these two objectives
        if len(front):
            label = f"{s.label} Pareto front ({len(front)})"
            ax.step(front[x], front[y], where="post", color=colour, lw=1.6, zorder=2, label=label)
            pfig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", line=dict(shape="hv", color=colour),
                                      name=label, hoverinfo="skip"))
        stopped = done[done[STATUS] == STOPPED] if single and STATUS in done else done.iloc[:0]
        if len(stopped):  # stopped early at a rung (search.scheduler): real scores, fewer steps
            ax.scatter(stopped[x], stopped[y], facecolors="none", edgecolors="black", s=110, lw=1.2, zorder=4,
                       label="stopped early (MO-ASHA)")
            pfig.add_trace(go.Scatter(x=stopped[x], y=stopped[y], mode="markers", name="stopped early (MO-ASHA)",
                                      marker=dict(symbol="circle-open", size=15, color="black"), hoverinfo="skip"))
        if single and FEASIBLE in done and (done[FEASIBLE] == False).any():  # noqa: E712 - a nullable column
            out = done[done[FEASIBLE] == False]  # noqa: E712
            ax.scatter(out[x], out[y], marker="x", s=60, color="red", zorder=4, label="violates a constraint")
            pfig.add_trace(go.Scatter(x=out[x], y=out[y], mode="markers", name="violates a constraint",
                                      marker=dict(symbol="x", size=11, color="red"), hoverinfo="skip"))
            ok = done[done[FEASIBLE] == True]  # noqa: E712
            feasible = pareto_front(ok, [x, y], [xdir, ydir]).sort_values(x) if len(ok) else ok
            if len(feasible):
                label = f"feasible front ({len(feasible)})"
                ax.step(feasible[x], feasible[y], where="post", color="green", lw=1.6, ls="--", zorder=2, label=label)
                pfig.add_trace(go.Scatter(x=feasible[x], y=feasible[y], mode="lines", name=label, hoverinfo="skip",
                                          line=dict(shape="hv", color="green", dash="dash")))
        bases = s.bases
        if len(bases) and x in bases and y in bases:
            ax.scatter(bases[x], bases[y], marker="*", s=180, color=colour, edgecolor="k", zorder=4,
                       label=f"{s.label} base model")
            pfig.add_trace(go.Scatter(x=bases[x], y=bases[y], mode="markers", name=f"{s.label} base model",
                                      marker=dict(symbol="star", size=16, color=colour, line=dict(width=1)),
                                      hovertext=[f"base model {b}<br>{y}: {v:.4g}" for b, v in
                                                 zip(bases.get(BASE, bases[TRIAL_ID]), bases[y])],
                                      hoverinfo="text"))
    title = "Open heads against " + y.upper() if single else "Pareto fronts: " + ", ".join(s.label for s in sweeps)
    ax.set(xlabel=f"{x} ({xdir})", ylabel=f"{y} ({ydir})", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    pfig.update_layout(title=title, xaxis_title=f"{x} ({xdir})", yaxis_title=f"{y} ({ydir})", template="plotly_white",
                       legend=dict(orientation="h", y=-0.2))
    return fig, pfig


def _gate_types(record: dict[str, Any]) -> list[str]:
    return [t for t in ATTENTION_TYPES if t in record["gates"]]


def _draw_gates(axes, record: dict[str, Any], value: str) -> None:
    for ax, kind in zip(axes, _gate_types(record)):
        grid = np.asarray(record["gates"][kind][value], dtype=np.float64)  # (layers, heads)
        ax.imshow(grid, cmap="Greens", vmin=0.0, vmax=1.0, aspect="equal")
        for (layer, head), v in np.ndenumerate(grid):
            ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")
        ax.set(title=f"{kind} ({int((grid > 0).sum())} open)", xlabel="head", ylabel="layer",
               xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))


def gate_heatmap(record: dict[str, Any], value: str = "gate", title: str = "") -> tuple[Figure, go.Figure]:
    """One evaluation's gates (a ``gates.jsonl`` record); ``value``: "gate" (eval gate) or "p_open"."""
    kinds = _gate_types(record)
    if not kinds:
        raise ValueError("this record has no gates (a model without learned gates)")
    fig, axes = figure_axes(1, len(kinds), figsize=(3.2 * len(kinds), 2.8), squeeze=False)
    _draw_gates(axes[0], record, value)
    title = title or f"{value} at step {record.get('step')}"
    fig.suptitle(title)
    pfig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds)
    for i, kind in enumerate(kinds, 1):
        grid = np.asarray(record["gates"][kind][value], dtype=np.float64)
        pfig.add_trace(go.Heatmap(z=grid, zmin=0, zmax=1, colorscale="Greens", showscale=i == len(kinds),
                                  text=np.round(grid, 2), texttemplate="%{text}",
                                  hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra>" + kind + "</extra>"),
                       row=1, col=i)
        pfig.update_yaxes(autorange="reversed", title_text="layer", dtick=1, row=1, col=i)
        pfig.update_xaxes(title_text="head", dtick=1, row=1, col=i)
    pfig.update_layout(title=title, template="plotly_white")
    return fig, pfig


def gate_evolution_gif(records: Sequence[dict[str, Any]], path: str | Path, value: str = "gate",
                       seconds_per_frame: float = 0.8) -> Path:
    """An animated GIF with one frame per evaluation (every record, none dropped); returns its path."""
    if not records:
        raise ValueError("no gate records to animate")
    kinds = _gate_types(records[0])
    frames = []
    for i, record in enumerate(records, 1):
        fig, axes = figure_axes(1, len(kinds), figsize=(3.2 * len(kinds), 2.8), squeeze=False)
        _draw_gates(axes[0], record, value)
        # the counter also keeps Pillow from merging frames that look alike (and dropping evaluations)
        fig.suptitle(f"{value} at step {record.get('step')} (evaluation {i} of {len(records)})")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        buf.seek(0)
        frames.append(Image.open(buf).convert("RGB"))
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [int(seconds_per_frame * 1000)] * len(frames)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, disposal=2,
                   optimize=False)
    return path


def learning_curves(histories: dict[str, pd.DataFrame], metrics: Sequence[str] = CURVE_METRICS
                    ) -> tuple[Figure, go.Figure]:
    """Each metric against step, one line per trial (``histories``: trial label -> its evaluations)."""
    metrics = [m for m in metrics if any(m in h for h in histories.values())]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = figure_axes(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    pfig = make_subplots(rows=rows, cols=cols, subplot_titles=metrics)
    for k, metric in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        for i, (label, h) in enumerate(histories.items()):
            if metric not in h or M.STEP not in h:
                continue
            colour = PALETTE[i % len(PALETTE)]
            ax.plot(h[M.STEP], h[metric], marker="o", ms=3, lw=1.2, color=colour, label=label)
            pfig.add_trace(go.Scatter(x=h[M.STEP], y=h[metric], mode="lines+markers", name=label, legendgroup=label,
                                      showlegend=k == 0, line=dict(color=colour)), row=k // cols + 1, col=k % cols + 1)
        ax.set(title=metric, xlabel="step")
        ax.grid(alpha=0.3)
        if metric == M.LR:
            ax.set_yscale("log")
            pfig.update_yaxes(type="log", row=k // cols + 1, col=k % cols + 1)
    for k in range(len(metrics), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    pfig.update_layout(title="Learning curves", template="plotly_white", height=320 * rows)
    return fig, pfig


def study_charts(storage: str, study_name: str, objectives: Sequence[str]) -> dict[str, tuple[Any, go.Figure]]:
    """Optuna's hyperparameter importance per objective and parallel coordinates, from the stored study.

    Returns {name: (matplotlib figure, plotly figure)}; a chart Optuna cannot draw yet (too few finished trials,
    a parameter that never varied) is left out.
    """
    import warnings

    import optuna
    import optuna.visualization as ov
    import optuna.visualization.matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=study_name, storage=storage)
    charts: dict[str, tuple[Any, go.Figure]] = {}
    for i, name in enumerate(objectives):
        def target(t, i=i):
            return t.values[i]

        def loss(t, i=i, sign=-1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0):
            return sign * t.values[i]

        # PED-ANOVA (Optuna's default evaluator since 4.x, needing no scikit-learn; named here so that every Optuna
        # this project accepts uses it) ranks parameters by how they reach low target values: a maximised objective
        # is negated for it
        key = name.replace("/", "_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots and PED-ANOVA experimental
            importance = {"target": loss, "target_name": name,
                          "evaluator": optuna.importance.PedAnovaImportanceEvaluator()}
            try:
                charts[f"importance_{key}"] = (ovm.plot_param_importances(study, **importance).figure,
                                               ov.plot_param_importances(study, **importance))
                parallel = {"target": target, "target_name": name}
                charts[f"parallel_{key}"] = (ovm.plot_parallel_coordinate(study, **parallel).figure,
                                             ov.plot_parallel_coordinate(study, **parallel))
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
                continue
    return charts


def layer_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """``open_heads/<type>/<layer>`` columns per attention type, in layer order."""
    out: dict[str, list[str]] = {}
    for kind in ATTENTION_TYPES:
        prefix = M.open_heads_key(kind) + "/"
        cols = [c for c in df.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]
        if cols:
            out[kind] = sorted(cols, key=lambda c: int(c[len(prefix):]))
    return out


def layer_chart(s: SweepResults) -> tuple[Figure, go.Figure] | None:
    """Per gated attention type: each layer's open heads (y) against that type's open heads (x), one point per
    completed trial, a line per layer; None when the table has no per-layer counts."""
    done = s.completed
    per_type = {kind: cols for kind, cols in layer_columns(done).items() if done[cols].notna().all(axis=None)}
    if done.empty or not per_type:
        return None
    fig, axes = figure_axes(1, len(per_type), figsize=(5.5 * len(per_type), 4), squeeze=False)
    pfig = make_subplots(rows=1, cols=len(per_type), subplot_titles=list(per_type))
    for j, (kind, cols) in enumerate(per_type.items()):
        rows = done.assign(_total=done[cols].sum(axis=1)).sort_values("_total")
        ax = axes[0][j]
        for i, col in enumerate(cols):
            color = PALETTE[i % len(PALETTE)]
            layer = col.rsplit("/", 1)[1]
            ax.plot(rows["_total"], rows[col], marker="o", color=color, label=f"layer {layer}")
            hover = "trial %{text}: %{y} open of %{x}<extra>layer " + layer + "</extra>"
            pfig.add_trace(go.Scatter(x=rows["_total"], y=rows[col], mode="lines+markers", name=f"{kind} layer {layer}",
                                      line={"color": color}, text=[str(t) for t in rows[TRIAL_ID]],
                                      hovertemplate=hover), row=1, col=j + 1)
        ax.set_xlabel(f"open heads, all {kind} layers")
        ax.set_ylabel("open heads in the layer")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        pfig.update_xaxes(title_text=f"open heads, all {kind} layers", row=1, col=j + 1)
    pfig.update_yaxes(title_text="open heads in the layer")
    pfig.update_layout(title="Which layers lose heads first (one point per trial)")
    fig.suptitle("Which layers lose heads first (one point per trial)")
    return fig, pfig
