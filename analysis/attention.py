"""Attention maps of one sentence for every head a pruned model kept (what Voita et al. watched during training).

``attention_maps(checkpoint, sentence)`` translates the sentence (greedy), then runs the model once more,
teacher-forced on its own translation, keeping each attention block's probabilities; ``attention_chart`` draws a
panel per remaining head (eval gate > 0), grouped by attention type and layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from model.config import ATTENTION_TYPES
from model.data import BOS_ID, EOS_ID
from model.decoding import translate_ids
from model.translate import load_for_inference

from .charts import figure_axes


@dataclass
class AttentionMaps:
    source: list[str]  # source pieces (with </s>)
    target: list[str]  # the translation's pieces, as fed to the decoder (<s> first)
    weights: dict[tuple[str, int], np.ndarray]  # (type, layer) -> (heads, queries, keys)
    gates: dict[tuple[str, int], np.ndarray]  # (type, layer) -> eval gate per head (1 where ungated)


def attention_maps(checkpoint: str | Path, sentence: str) -> AttentionMaps:
    model, tok = load_for_inference(str(checkpoint))
    ids = tok.src.encode([sentence])[0][: model.src_pos.table.size(0) - 1] + [EOS_ID]
    src = torch.tensor([ids])
    with torch.no_grad():
        hyp = translate_ids(model, src, beam_size=1)[0]
        tgt_in = torch.tensor([[BOS_ID, *hyp]])
        blocks = list(model.attention_blocks())
        for _, _, attn in blocks:
            attn.keep_weights = True
        try:
            memory, keep = model.encode(src)
            model.decode(tgt_in, memory, keep)
            weights = {(kind, layer): attn.last_weights[0].numpy() for kind, layer, attn in blocks}
        finally:
            for _, _, attn in blocks:
                attn.keep_weights, attn.last_weights = False, None
        gates = {}
        for kind, layer, attn in blocks:
            active = attn.gate is not None and attn.gate_active
            gates[(kind, layer)] = attn.gate.eval_gates().numpy() if active else np.ones(attn.n_heads)
    piece = tok.src.sp.id_to_piece
    return AttentionMaps([piece(i) for i in ids], ["<s>", *[tok.tgt.sp.id_to_piece(i) for i in hyp]], weights, gates)


def attention_chart(maps: AttentionMaps, max_heads: int = 96) -> tuple[Figure, go.Figure]:
    """A panel per remaining head: rows = attention type and layer, columns = heads; closed heads are left out.
    Past ``max_heads`` panels (the Multi30k base has 72 heads) the chart ends at a whole layer and its title says
    how many of the remaining heads it shows."""
    layers = [key for t in ATTENTION_TYPES for key in sorted(maps.weights) if key[0] == t]
    open_heads = {key: [h for h in range(len(maps.gates[key])) if maps.gates[key][h] > 0] for key in layers}
    rows, shown = [], 0
    for key in (key for key in layers if open_heads[key]):
        if rows and shown + len(open_heads[key]) > max_heads:
            break
        rows.append(key)
        shown += len(open_heads[key])
    total = sum(len(heads) for heads in open_heads.values())
    cols = max(len(open_heads[key]) for key in rows)
    fig, axes = figure_axes(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows) + 0.4), squeeze=False)
    pfig = make_subplots(rows=len(rows), cols=cols, horizontal_spacing=0.02, vertical_spacing=0.06)
    for r, key in enumerate(rows):
        kind = key[0]
        queries = maps.source if kind == "enc_self" else maps.target
        keys = maps.source if kind in ("enc_self", "dec_cross") else maps.target
        heads = open_heads[key]
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(heads):
                continue
            h = heads[c]
            w = maps.weights[key][h]  # (queries, keys)
            ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"{kind} L{key[1]} h{h} (gate {maps.gates[key][h]:.2f})", fontsize=7)
            pfig.add_trace(go.Heatmap(z=w, x=keys, y=queries, zmin=0, zmax=1, colorscale="Blues", showscale=False,
                                      hovertemplate=f"{kind} layer {key[1]} head {h}<br>%{{y}} → %{{x}}: "
                                                    "%{z:.2f}<extra></extra>"), row=r + 1, col=c + 1)
            pfig.update_yaxes(autorange="reversed", showticklabels=False, row=r + 1, col=c + 1)
            pfig.update_xaxes(showticklabels=False, row=r + 1, col=c + 1)
    which = f"the {total} remaining heads" if shown == total else f"{shown} of the {total} remaining heads"
    title = f"Attention of {which}: " + " ".join(maps.source)
    fig.suptitle(title[:140], fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.2 * len(rows) + 0.4)))  # the title above the first row
    pfig.update_layout(title=title[:140], height=190 * len(rows) + 80, template="plotly_white")
    return fig, pfig
