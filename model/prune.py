"""Physical head removal: a gated model becomes a smaller plain model that computes the same function.

In evaluation a head's gate is deterministic, z_h = min(1, max(0, sigmoid(log_alpha_h) * (zeta - gamma) + gamma)).
A head with z_h = 0 contributes nothing, so its rows of the q/k/v projections and its columns of the output
projection go; an open head's z_h multiplies its output, so it is folded into its output-projection columns. A block
whose heads all close keeps only the output projection's bias (what the residual branch then adds). The result is a
plain model (``gates.mode: none``) with ``model.heads`` recording the heads kept per layer.

    python -m model.prune CHECKPOINT --out PRUNED.pt
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, checkpoint_config, load_checkpoint, save_checkpoint
from .cli import add_out, command_parser, out_file
from .config import ATTENTION_TYPES, GateConfig
from .transformer import MultiHeadAttention, Transformer
from .translate import load_for_inference

PRUNED_FILE = "pruned.pt"  # what --out DIR receives


def _kept(attn: MultiHeadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the heads to keep, their eval gate values)."""
    if attn.gate is not None and attn.gate_active:
        z = attn.gate.eval_gates().detach()
    else:
        z = torch.ones(attn.n_heads)
    keep = torch.nonzero(z > 0).flatten()
    return keep, z[keep]


def _copy_block(src: MultiHeadAttention, dst: MultiHeadAttention, keep: torch.Tensor, z: torch.Tensor) -> None:
    H, Dh = src.n_heads, src.head_dim
    with torch.no_grad():
        if dst.n_heads:
            if src.self_attention:
                w = src.qkv.weight.view(3, H, Dh, -1)[:, keep]  # (3, kept, Dh, D)
                dst.qkv.weight.copy_(w.reshape(-1, w.size(-1)))
                dst.qkv.bias.copy_(src.qkv.bias.view(3, H, Dh)[:, keep].reshape(-1))
            else:
                dst.q.weight.copy_(src.q.weight.view(H, Dh, -1)[keep].reshape(-1, src.q.weight.size(-1)))
                dst.q.bias.copy_(src.q.bias.view(H, Dh)[keep].reshape(-1))
                w = src.kv.weight.view(2, H, Dh, -1)[:, keep]  # (2, kept, Dh, D)
                dst.kv.weight.copy_(w.reshape(-1, w.size(-1)))
                dst.kv.bias.copy_(src.kv.bias.view(2, H, Dh)[:, keep].reshape(-1))
            out = src.out.weight.view(-1, H, Dh)[:, keep] * z[None, :, None]  # (D, kept, Dh), gates folded in
            dst.out.weight.copy_(out.reshape(out.size(0), -1))
        dst.out.bias.copy_(src.out.bias)


Layout = dict[tuple[str, int], list[int]]  # (attention type, layer) -> indices of the heads to keep


def prune_model(model: Transformer, layout: Layout | None = None) -> Transformer:
    """The smaller plain model equal to ``model`` in evaluation (eval-mode gates), in eval mode itself.

    ``layout`` names the heads to keep per block instead of the gates (blocks it does not name keep every head):
    the baselines (random or importance pruning) remove heads this way, from an ungated model.
    """
    cfg = copy.deepcopy(model.cfg)
    blocks = list(model.attention_blocks())
    kept = {(kind, layer): _kept(attn) for kind, layer, attn in blocks}
    for key, heads in (layout or {}).items():
        if key not in kept:
            raise ValueError(f"layout names {key}, which is not an attention block of this model")
        keep = torch.tensor(sorted(set(heads)), dtype=torch.long)
        kept[key] = (keep, torch.ones(len(keep)))
    cfg.heads = {kind: [len(kept[(kind, i)][0]) for i in range(cfg.encoder_layers if kind == "enc_self"
                                                                else cfg.decoder_layers)]
                 for kind in ATTENTION_TYPES}
    pruned = Transformer(cfg, model.src_vocab, model.tgt_vocab, GateConfig(mode="none"))
    attention_names = {name for name, _ in model.named_modules() if name.endswith(("self_attn", "cross_attn"))}
    state = {k: v for k, v in model.state_dict().items()
             if not any(k.startswith(name + ".") for name in attention_names)}
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    assert not unexpected and all(any(k.startswith(n + ".") for n in attention_names) for k in missing), missing
    for (kind, layer, src), (_, _, dst) in zip(blocks, pruned.attention_blocks(), strict=True):
        _copy_block(src, dst, *kept[(kind, layer)])
    return pruned.eval()


def random_layout(model: Transformer, kinds: list[str], budget: int, seed: int) -> Layout:
    """Keep ``budget`` heads of the attention types ``kinds``, chosen uniformly at random (the null baseline)."""
    heads = [(kind, layer, h) for kind, layer, attn in model.attention_blocks() if kind in kinds
             for h in range(attn.n_heads)]
    if not 0 <= budget <= len(heads):
        raise ValueError(f"budget {budget}: allowed 0..{len(heads)} heads of {kinds}")
    generator = torch.Generator().manual_seed(seed)
    chosen = [heads[i] for i in torch.randperm(len(heads), generator=generator)[:budget].tolist()]
    return _layout(model, kinds, chosen)


def importance_layout(scores: dict[tuple[str, int], torch.Tensor], model: Transformer, kinds: list[str],
                      budget: int) -> Layout:
    """Keep the ``budget`` heads of ``kinds`` with the highest importance (see :func:`head_importance`)."""
    ranked = sorted(((float(v), kind, layer, h) for (kind, layer), values in scores.items() if kind in kinds
                     for h, v in enumerate(values)), reverse=True)
    if not 0 <= budget <= len(ranked):
        raise ValueError(f"budget {budget}: allowed 0..{len(ranked)} heads of {kinds}")
    return _layout(model, kinds, [(kind, layer, h) for _, kind, layer, h in ranked[:budget]])


def _layout(model: Transformer, kinds: list[str], chosen: list[tuple[str, int, int]]) -> Layout:
    layout: Layout = {(kind, layer): [] for kind, layer, _ in model.attention_blocks() if kind in kinds}
    for kind, layer, h in chosen:
        layout[(kind, layer)].append(h)
    return {key: sorted(v) for key, v in layout.items()}


def head_importance(model: Transformer, batches, normalize: bool = True,
                    kept: Layout | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """Head importance of Michel et al. 2019 (eq. 2): I_h = sum over the batches of |dL/dxi_h|, where xi_h = 1
    multiplies head h's output; with ``normalize``, scores are divided by their layer's L2 norm (their sec. 4.1).

    ``kept``: heads still in use per block (blocks it does not name keep all); the others are masked (xi_h = 0),
    score 0 and are left out of their layer's norm (iterative pruning re-scores what is left).
    ``batches``: an iterable of :class:`model.data.Batch`, moved to the model's device. The model's parameters are
    left untouched; the scores are on the CPU.
    """
    device = next(model.parameters()).device
    blocks = list(model.attention_blocks())
    live = {(kind, layer): torch.zeros(attn.n_heads) for kind, layer, attn in blocks}
    for (kind, layer), values in live.items():
        names = (kept or {}).get((kind, layer))
        values[list(range(len(values))) if names is None else list(names)] = 1.0
    masks = {key: values.to(device, copy=True).requires_grad_(True) for key, values in live.items()}
    scores = {key: torch.zeros(len(m)) for key, m in masks.items()}
    was_training = model.training
    model.eval()
    try:
        for kind, layer, attn in blocks:
            attn.head_mask = masks[(kind, layer)]
        for batch in batches:
            batch = batch.to(device)
            out = model.loss(batch.src, batch.tgt_in, batch.tgt_out, 0.0)
            grads = torch.autograd.grad(out.ce_sum / max(1, out.n_tokens), list(masks.values()))
            for key, g in zip(masks, grads, strict=True):
                scores[key] += g.abs().cpu()
    finally:
        for _, _, attn in blocks:
            attn.head_mask = None
        model.train(was_training)
    scores = {key: v * live[key] for key, v in scores.items()}
    if normalize:
        scores = {key: v / v.norm().clamp_min(1e-12) for key, v in scores.items()}
    return scores


def iterative_layout(model: Transformer, kinds: list[str], budget: int, batches: list, fraction: float,
                     log=None) -> Layout:
    """Michel et al. 2019, sec. 4.2: remove the ``fraction`` of all heads of ``kinds`` (at least one) that is least
    important, re-score the heads that are left on the same batches, and repeat until ``budget`` heads are left."""
    total = sum(attn.n_heads for kind, _, attn in model.attention_blocks() if kind in kinds)
    if not 0 <= budget <= total:
        raise ValueError(f"budget {budget}: allowed 0..{total} heads of {kinds}")
    step = max(1, round(fraction * total))
    layout = _layout(model, kinds, [(kind, layer, h) for kind, layer, attn in model.attention_blocks()
                                    if kind in kinds for h in range(attn.n_heads)])
    left = total
    while left > budget:
        scores = head_importance(model, batches, kept=layout)
        ranked = sorted((float(scores[key][h]), key, h) for key, heads in layout.items() for h in heads)
        for _, key, h in ranked[: min(step, left - budget)]:
            layout[key].remove(h)
        left = sum(len(v) for v in layout.values())
        if log is not None:
            log(f"iterative pruning: {left} of {total} heads left")
    return layout


def head_counts(model: Transformer) -> dict[str, int]:
    """Heads per attention type, and in total."""
    counts = {kind: sum(attn.n_heads for k, _, attn in model.attention_blocks() if k == kind)
              for kind in ATTENTION_TYPES}
    return {**counts, "total": sum(counts.values())}


def prune_checkpoint(path: str | Path, out: str | Path) -> tuple[Transformer, Transformer]:
    """Write the pruned model of a gated checkpoint to ``out``; returns (gated model, pruned model)."""
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload)
    model, tok = load_for_inference(str(path), payload=payload)
    pruned = prune_model(model)
    new_cfg = copy.deepcopy(cfg)
    new_cfg.model, new_cfg.gates = pruned.cfg, GateConfig(mode="none")
    save_checkpoint(out, {"model": pruned.state_dict(), "pruned_from": str(path)}, new_cfg, tok)
    return model, pruned


def main(argv: list[str] | None = None, prog: str = "python -m model.prune") -> int:
    parser = command_parser(prog, __doc__.split("\n\n")[0], [
        f"{prog} results/quickstart/prune_trainable_.../checkpoint_000002/step_00000300.pt --out results/pruned",
    ])
    parser.add_argument("checkpoint", help="a checkpoint of a model with learned gates")
    add_out(parser, f"writes the pruned model's checkpoint, {PRUNED_FILE}, into it", required=True)
    args = parser.parse_args(argv)
    try:
        target = out_file(args.out, PRUNED_FILE)
        gated, pruned = prune_checkpoint(args.checkpoint, target)
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    before, after = head_counts(gated), head_counts(pruned)
    params = (sum(p.numel() for p in gated.parameters()), sum(p.numel() for p in pruned.parameters()))
    print(f"heads: {before['total']} -> {after['total']} ("
          + ", ".join(f"{k} {before[k]} -> {after[k]}" for k in ATTENTION_TYPES) + ")")
    print(f"kept per layer: {pruned.cfg.heads}")
    print(f"parameters: {params[0]:,} -> {params[1]:,}; written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
