"""Physical pruning: the pruned model computes what the gated model computes in evaluation, with fewer heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import GateConfig, ModelConfig
from model.data import PAD_ID
from model.decoding import translate_ids
from model.prune import head_counts, main, prune_model
from model.transformer import Transformer

CFG = ModelConfig(d_model=32, n_heads=4, encoder_layers=3, decoder_layers=2, d_ff=48, dropout=0.1, max_positions=64,
                  share_embeddings=True)
GATES = GateConfig(mode="learned", attention=["enc_self", "dec_self", "dec_cross"])


def gated_model(norm: str = "pre") -> Transformer:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, norm=norm), 50, 50, GATES)
    with torch.no_grad():
        for _, _, p in model.gates():
            p.log_alpha.normal_(0.0, 3.0)  # a mix of closed, partly open and open heads
        blocks = {(k, i): a for k, i, a in model.attention_blocks()}
        blocks[("enc_self", 1)].gate.log_alpha.fill_(-10.0)  # a whole encoder block closed
        blocks[("dec_cross", 0)].gate.log_alpha.fill_(-10.0)  # a whole cross-attention block closed
        blocks[("dec_self", 1)].gate.log_alpha.copy_(torch.tensor([0.3, -10.0, 10.0, -0.5]))  # gates in (0, 1)
    return model.eval()


def batch():
    torch.manual_seed(1)
    src = torch.randint(4, 50, (3, 9))
    src[1, 6:] = PAD_ID
    tgt = torch.randint(4, 50, (3, 7))
    return src, tgt


def assert_same_outputs(a: Transformer, b: Transformer) -> torch.Tensor:
    """Encoder outputs and teacher-forced logits of two models agree on a padded batch; returns its sources."""
    src, tgt = batch()
    with torch.no_grad():
        mem_a, keep_a = a.encode(src)
        mem_b, keep_b = b.encode(src)
        assert torch.allclose(mem_a, mem_b, atol=1e-5)
        assert torch.allclose(a.decode(tgt, mem_a, keep_a), b.decode(tgt, mem_b, keep_b), atol=1e-5)
    return src


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_pruned_model_equals_the_gated_model_in_evaluation(norm):
    model = gated_model(norm)
    pruned = prune_model(model)
    src = assert_same_outputs(model, pruned)
    with torch.no_grad():
        assert translate_ids(model, src, beam_size=3) == translate_ids(pruned, src, beam_size=3)  # cached decoding


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_a_block_without_heads_is_skipped_whole_with_pre_norm(norm):
    """A pruned block whose heads are all gone adds only its output bias: with pre-norm its sub-layer's norm and
    projections never run (the outputs stay the gated model's: the test above); post-norm still normalises."""
    pruned = prune_model(gated_model(norm))
    skipped = [pruned.encoder[1].sub_attn.norm, pruned.decoder[0].sub_cross.norm]
    running = [pruned.encoder[0].sub_attn.norm, pruned.decoder[1].sub_cross.norm]
    calls = {id(m): 0 for m in skipped + running}
    for m in skipped + running:
        m.register_forward_hook(lambda module, _inputs, _out: calls.__setitem__(id(module), calls[id(module)] + 1))
    src, tgt = batch()
    with torch.no_grad():
        memory, keep = pruned.encode(src)
        pruned.decode(tgt, memory, keep)
    assert all(calls[id(m)] == 1 for m in running)
    assert [calls[id(m)] for m in skipped] == ([0, 0] if norm == "pre" else [1, 1])


def test_closed_heads_and_blocks_are_gone():
    model = gated_model()
    pruned = prune_model(model)
    open_before = model.open_heads()
    counts = head_counts(pruned)
    for kind in ("enc_self", "dec_self", "dec_cross"):
        assert counts[kind] == open_before[kind]
    assert pruned.cfg.heads["enc_self"][1] == 0 and pruned.cfg.heads["dec_cross"][0] == 0
    assert pruned.cfg.heads["dec_self"][1] == 3
    assert next(pruned.gates(), None) is None
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruning_a_checkpoint_writes_a_loadable_smaller_model(tmp_path, capsys):
    from model.checkpoint import save_checkpoint
    from model.data import load_data
    from model.translate import load_for_inference
    from tests.helpers import tiny_config

    cfg = tiny_config("gates.mode=learned", "gates.attention=[enc_self, dec_cross]")

    data = load_data(cfg.data, "valid", lambda _: None, max_positions=cfg.model.max_positions)
    model = Transformer(cfg.model, len(data.tokenizers.src), len(data.tokenizers.tgt), cfg.gates)
    with torch.no_grad():
        for _, _, g in model.gates():
            g.log_alpha.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    save_checkpoint(tmp_path / "gated.pt", {"model": model.state_dict()}, cfg, data.tokenizers)
    assert main([str(tmp_path / "gated.pt"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "heads: 24 -> 16" in out  # half of enc_self and dec_cross (8 + 8 of 16) pruned
    assert f"written to {tmp_path / 'out' / 'pruned.pt'}" in out  # --out is a folder, as in every command
    pruned, _ = load_for_inference(str(tmp_path / "out" / "pruned.pt"))
    assert pruned.cfg.heads == {"enc_self": [2, 2], "dec_self": [4, 4], "dec_cross": [2, 2]}


def plain_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CFG, 50, 50, GateConfig(mode="none")).eval()


def test_a_layout_removes_exactly_the_heads_a_zero_mask_silences():
    model = plain_model()
    layout = {("enc_self", 0): [1, 3], ("enc_self", 2): [], ("dec_cross", 1): [0]}
    pruned = prune_model(model, layout)
    for (kind, layer), keep in layout.items():
        attn = dict(((k, i), a) for k, i, a in model.attention_blocks())[(kind, layer)]
        attn.head_mask = torch.tensor([1.0 if h in keep else 0.0 for h in range(4)])
    assert_same_outputs(model, pruned)
    assert pruned.cfg.heads["enc_self"] == [2, 4, 0] and pruned.cfg.heads["dec_cross"] == [4, 1]
    with pytest.raises(ValueError, match="not an attention block"):
        prune_model(model, {("enc_self", 7): [0]})


def test_random_layouts_keep_the_budget_and_follow_the_seed():
    from model.prune import random_layout

    model = plain_model()
    a, b, c = (random_layout(model, ["enc_self"], 5, seed) for seed in (1, 1, 2))
    assert a == b and a != c
    assert set(a) == {("enc_self", i) for i in range(3)} and sum(len(v) for v in a.values()) == 5
    assert head_counts(prune_model(model, a)) == {"enc_self": 5, "dec_self": 8, "dec_cross": 8, "total": 21}
    with pytest.raises(ValueError, match="budget 13"):
        random_layout(model, ["enc_self"], 13, 0)


def test_importance_ranks_a_silent_head_last_and_pruning_keeps_the_most_important():
    from model.data import Batch
    from model.prune import head_importance, importance_layout

    model = plain_model()
    blocks = {(k, i): a for k, i, a in model.attention_blocks()}
    with torch.no_grad():  # head 2 of encoder layer 1 writes nothing: it cannot matter
        blocks[("enc_self", 1)].out.weight.view(32, 4, 8)[:, 2] = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src, tgt = batch()
    tgt_in = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    scores = head_importance(model, [Batch(src, tgt_in, tgt, [0, 1, 2])])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # parameters untouched
    assert all(m.head_mask is None for m in blocks.values())
    assert scores[("enc_self", 1)][2] == 0.0 and scores[("enc_self", 1)][[0, 1, 3]].gt(0).all()
    assert all(torch.isclose(v.norm(), torch.tensor(1.0)) for v in scores.values())  # normalised per layer
    layout = importance_layout(scores, model, ["enc_self"], 11)
    assert 2 not in layout[("enc_self", 1)] and sum(len(v) for v in layout.values()) == 11


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_importance_of_a_model_on_the_gpu_equals_the_cpu_scores():
    """The masks live on the model's device and the batches are moved there; the scores come back on the CPU."""
    from model.data import Batch
    from model.prune import head_importance

    model = plain_model()
    src, tgt = batch()
    tgt_in = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    batches = [Batch(src, tgt_in, tgt, [0, 1, 2])]
    on_cpu = head_importance(model, batches)
    on_gpu = head_importance(model.to("cuda"), batches)
    assert all(v.device.type == "cpu" and torch.allclose(v, on_cpu[k], atol=1e-5) for k, v in on_gpu.items())


def _importance_batch():
    from model.data import Batch

    src, tgt = batch()
    tgt_in = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    return [Batch(src, tgt_in, tgt, [0, 1, 2])]


def test_importance_of_a_pruned_set_scores_removed_heads_zero_and_normalises_what_is_left():
    from model.prune import head_importance

    model = plain_model()
    kept = {("enc_self", 0): [0, 2], ("enc_self", 1): [], ("enc_self", 2): [1, 2, 3]}
    scores = head_importance(model, _importance_batch(), kept=kept)
    full = head_importance(model, _importance_batch())
    assert scores[("enc_self", 0)][[1, 3]].eq(0).all() and scores[("enc_self", 0)][[0, 2]].gt(0).all()
    assert scores[("enc_self", 1)].eq(0).all()  # a layer with no head left scores nothing
    assert torch.isclose(scores[("enc_self", 2)].norm(), torch.tensor(1.0))  # normalised over the heads left
    assert scores[("dec_cross", 0)].gt(0).all()  # blocks it does not name keep all their heads
    # masking heads changes what the others are worth (the point of re-scoring)
    assert not torch.allclose(scores[("enc_self", 2)][1:], full[("enc_self", 2)][1:] / full[("enc_self", 2)][1:].norm())


def test_iterative_pruning_rescores_each_round_and_one_round_is_one_shot_importance():
    from model.prune import head_importance, importance_layout, iterative_layout

    model = plain_model()
    rounds: list[str] = []
    layout = iterative_layout(model, ["enc_self"], 3, _importance_batch(), 0.25, log=rounds.append)
    assert sum(len(v) for v in layout.values()) == 3 and set(layout) == {("enc_self", i) for i in range(3)}
    assert rounds == [f"iterative pruning: {n} of 12 heads left" for n in (9, 6, 3)]  # 3 heads (25%) a round
    one_round = iterative_layout(model, ["enc_self"], 3, _importance_batch(), 1.0)
    assert one_round == importance_layout(head_importance(model, _importance_batch()), model, ["enc_self"], 3)
    with pytest.raises(ValueError, match="budget 13"):
        iterative_layout(model, ["enc_self"], 13, _importance_batch(), 0.1)
