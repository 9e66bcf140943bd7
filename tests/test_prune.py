"""Physical pruning: the pruned model computes what the gated model computes in evaluation, with fewer heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import GateConfig, ModelConfig
from model.decoding import translate_ids
from model.prune import head_counts, main, prune_model
from model.transformer import PAD_ID, Transformer

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


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_pruned_model_equals_the_gated_model_in_evaluation(norm):
    model = gated_model(norm)
    pruned = prune_model(model)
    src, tgt = batch()
    with torch.no_grad():
        mem_a, keep_a = model.encode(src)
        mem_b, keep_b = pruned.encode(src)
        assert torch.allclose(mem_a, mem_b, atol=1e-5)
        assert torch.allclose(model.decode(tgt, mem_a, keep_a), pruned.decode(tgt, mem_b, keep_b), atol=1e-5)
        assert translate_ids(model, src, beam_size=3) == translate_ids(pruned, src, beam_size=3)  # cached decoding


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
    from tests.conftest import tiny_config

    cfg = tiny_config("gates.mode=learned", "gates.attention=[enc_self, dec_cross]")

    data = load_data(cfg.data, "valid", lambda _: None, max_positions=cfg.model.max_positions)
    model = Transformer(cfg.model, len(data.tokenizers.src), len(data.tokenizers.tgt), cfg.gates)
    with torch.no_grad():
        for _, _, g in model.gates():
            g.log_alpha.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    save_checkpoint(tmp_path / "gated.pt", {"model": model.state_dict()}, cfg, data.tokenizers)
    assert main([str(tmp_path / "gated.pt"), "--out", str(tmp_path / "pruned.pt")]) == 0
    assert "heads: 24 -> 16" in capsys.readouterr().out  # half of enc_self and dec_cross (8 + 8 of 16) pruned
    pruned, _ = load_for_inference(str(tmp_path / "pruned.pt"))
    assert pruned.cfg.heads == {"enc_self": [2, 2], "dec_self": [4, 4], "dec_cross": [2, 2]}
