import copy

import pytest
import torch

from model.config import GateConfig, ModelConfig
from model.data import PAD_ID
from model.transformer import Transformer, token_losses

V = 50


def make(gates: GateConfig | None = None, **model_kw) -> Transformer:
    cfg = ModelConfig(d_model=16, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=32, dropout=0.0,
                      max_positions=64, **model_kw)
    return Transformer(cfg, V, V, gates)


def batch(B=3, S=7, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    src[0, 5:] = PAD_ID  # a padded row
    tgt = torch.randint(4, V, (B, T), generator=g)
    return src, tgt


ALL = ["enc_self", "dec_self", "dec_cross"]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_loss_from_one_log_softmax_is_torchs_cross_entropy_with_padding_left_out(smoothing):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, V, generator=g, dtype=torch.float64, requires_grad=True)
    gold = torch.randint(1, V, (40,), generator=g)
    gold[::3] = PAD_ID
    ce, nll, keep = token_losses(logits, gold, smoothing)
    want = torch.nn.functional.cross_entropy(logits, gold, ignore_index=PAD_ID, label_smoothing=smoothing,
                                             reduction="sum")
    assert torch.allclose(ce, want, rtol=1e-12)
    assert torch.allclose(torch.autograd.grad(ce, logits)[0], torch.autograd.grad(want, logits)[0], atol=1e-12)
    unsmoothed = torch.nn.functional.cross_entropy(logits, gold, ignore_index=PAD_ID, reduction="sum")
    assert not nll.requires_grad and torch.allclose(nll, unsmoothed, rtol=1e-12)
    assert keep.sum() == 26 and torch.equal(nll, ce.detach()) == (smoothing == 0.0)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_shapes(norm, positions):
    model = make(norm=norm, positions=positions).eval()
    src, tgt = batch()
    memory, keep = model.encode(src)
    assert memory.shape == (3, 7, 16) and keep.shape == (3, 7)
    assert model.decode(tgt, memory, keep).shape == (3, 5, V)
    out = model.loss(src, tgt, tgt, label_smoothing=0.1)
    assert out.ce_sum.dim() == 0 and out.n_tokens == 15


def test_shared_and_tied_embeddings_are_one_tensor():
    model = make(share_embeddings=True, tie_output=True)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = make(tie_output=False)
    assert untied.output.weight is not untied.tgt_embed.weight


def test_padding_does_not_change_a_sentence():
    """A sentence translates the same alone or padded in a batch with longer ones (masking is right)."""
    model = make().eval()
    src, tgt = batch()
    memory, keep = model.encode(src)
    full = model.decode(tgt, memory, keep)[0]
    m1, k1 = model.encode(src[:1, :5])
    alone = model.decode(tgt[:1], m1, k1)[0]
    assert torch.allclose(full, alone, atol=1e-5)


@pytest.mark.parametrize("attention", [["enc_self"], ALL])
def test_all_gates_open_equals_ungated(attention):
    plain = make().eval()
    for mode in ("open", "learned"):
        gated = make(GateConfig(mode=mode, attention=attention)).eval()
        state = plain.state_dict()
        gated.load_state_dict(state, strict=False)
        if mode == "learned":
            for _, _, g in gated.gates():
                g.log_alpha.data.fill_(10.0)  # eval gate exactly 1
        src, tgt = batch()
        a = plain.decode(tgt, *plain.encode(src))
        b = gated.decode(tgt, *gated.encode(src))
        assert torch.equal(a, b), mode


@pytest.mark.parametrize("kind", ALL)
def test_closed_head_contributes_exactly_zero(kind):
    """With head 1 of every gated block closed, that head's query/key/value weights do not matter at all."""
    model = make(GateConfig(mode="learned", attention=[kind])).eval()
    for _, _, g in model.gates():
        g.log_alpha.data[1] = -10.0
    src, tgt = batch()
    before = model.decode(tgt, *model.encode(src))
    other = copy.deepcopy(model)
    dh = 4
    for k, _, attn in other.attention_blocks():
        if k != kind:
            continue
        with torch.no_grad():
            lin = attn.qkv if attn.self_attention else attn.kv
            parts = lin.weight.view(-1, 4, dh, 16)  # (parts, H, Dh, D)
            parts[:, 1] = torch.randn_like(parts[:, 1]) * 5
    after = other.decode(tgt, *other.encode(src))
    assert torch.equal(before, after)
    assert other.open_heads()[kind] == 4 * 2 - 2


def test_gradients_reach_log_alpha_from_loss_and_penalty():
    model = make(GateConfig(mode="learned", attention=ALL)).train()
    src, tgt = batch()
    out = model.loss(src, tgt, tgt, 0.1)
    (out.ce_sum / out.n_tokens + 0.5 * model.penalty_l0()).backward()
    for kind, layer, g in model.gates():
        assert g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0, (kind, layer)


def test_penalty_is_mean_of_per_block_expected_l0():
    model = make(GateConfig(mode="learned", attention=["enc_self", "dec_cross"], init_log_alpha=0.0))
    p = float(next(model.gates())[2].p_open()[0].detach())
    assert model.penalty_l0().item() == pytest.approx(4 * p)  # 4 blocks, 4 heads each, mean of sums
    assert model.expected_l0().item() == pytest.approx(16 * p)
    assert make().penalty_l0().item() == 0.0


def test_open_heads_report_counts_per_type():
    model = make(GateConfig(mode="learned", attention=["enc_self"]))
    enc0 = model.encoder[0].self_attn.gate
    enc0.log_alpha.data[:3] = -10.0
    heads = model.open_heads()
    assert heads == {"enc_self": 5, "dec_self": 8, "dec_cross": 8, "total": 21}
    report = model.gate_report()
    assert set(report) == {"enc_self"}
    assert report["enc_self"]["gate"][0][:3] == [0.0, 0.0, 0.0]
    assert len(report["enc_self"]["p_open"]) == 2
    assert report["enc_self"]["open"] == [1, 4]


def test_incremental_decoding_equals_full_recompute():
    model = make(GateConfig(mode="learned", attention=ALL)).eval()
    src, tgt = batch(T=6)
    memory, keep = model.encode(src)
    full = model.decode(tgt, memory, keep)  # (B, T, V)
    cache = model.new_cache()
    steps = [model.decode_step(tgt[:, t : t + 1], memory, keep, cache, t) for t in range(tgt.size(1))]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_freeze_marks_only_the_named_parts():
    model = make(GateConfig(mode="learned", attention=ALL), tie_output=False)
    model.freeze(["decoder"])
    assert all(not p.requires_grad for n, p in model.decoder.named_parameters() if "log_alpha" not in n)
    assert all(g.log_alpha.requires_grad for _, _, g in model.gates())
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert not model.output.weight.requires_grad
    assert model.src_embed.weight.requires_grad


def test_learned_gates_need_gates():
    with pytest.raises(ValueError, match="no gates"):
        make().set_gate_mode("learned")


@pytest.mark.parametrize("causal", [False, True])
def test_kept_attention_weights_are_the_ones_attention_used(causal):
    from model.transformer import MultiHeadAttention

    attn = MultiHeadAttention(16, 4, 0.0, self_attention=True).eval()
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    attn.keep_weights = True
    out = attn(x, key_keep=None if causal else keep, causal=causal)
    w = attn.last_weights  # (B, H, L, S)
    _, _, v = attn._split(attn.qkv(x), 3)
    manual = attn.out((w @ v).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(out, manual, atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 5), atol=1e-6)
    if not causal:
        assert torch.all(w[1, :, :, 3:] == 0)  # padded keys get nothing


def test_bf16_autocast_on_a_cpu_attends_in_fp32(monkeypatch):
    """Under bf16 autocast on a CPU, attention itself runs in fp32 (its fused CPU kernel is several times slower in
    bf16): scaled_dot_product_attention receives fp32 queries, keys and values while the projections around it stay
    in bf16; the loss stays within bf16's rounding of the fp32 loss and every gradient is finite. Without autocast
    nothing changes."""
    import model.transformer as T

    seen = []
    sdpa = T.F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(T.F, "scaled_dot_product_attention", spy)
    model = make(GateConfig(mode="learned", attention=ALL))
    src, tgt = batch()
    full = model.loss(src, tgt[:, :-1], tgt[:, 1:], 0.1).ce_sum
    assert {s[:3] for s in seen} == {(torch.float32,) * 3}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(src, tgt[:, :-1], tgt[:, 1:], 0.1)
        projected = model.encoder[0].self_attn.qkv(torch.randn(2, 3, 16))
    assert projected.dtype == torch.bfloat16  # the projections in bf16, as autocast casts them
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen)
    out.ce_sum.backward()
    assert abs(out.ce_sum.item() - full.item()) < 0.02 * abs(full.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
