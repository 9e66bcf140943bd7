import copy

import pytest
import torch

from model.data import EOS_ID, PAD_ID, pad_rows
from model.decoding import beam_search, greedy_search, translate_ids
from model.translate import load_for_inference


@pytest.fixture(scope="module")
def model_and_sources(trained_run):
    """A briefly trained gated model and a padded batch of real held-out sources of varied lengths."""
    model, tok = load_for_inference(str(trained_run.checkpoint))
    lines = [
        "The dog sees a cat.",
        "Some old farmers that sleep liked the red house near a river.",
        "A queen builds the bridge.",
        "The small clever birds that watch a boat follow some girls behind the green tree.",
        "A doctor helped the king.",
    ]
    ids = [i + [EOS_ID] for i in tok.src.encode(lines)]
    return model, pad_rows(ids, max(len(i) for i in ids))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_size_one_equals_greedy(model_and_sources, alpha):
    model, src = model_and_sources
    greedy = greedy_search(model, src)
    assert beam_search(model, src, beam_size=1, length_penalty=alpha) == greedy
    assert _ended_by_eos(src, greedy) == [True] * len(greedy)  # EOS handling is exercised


@pytest.mark.parametrize("beam", [1, 4])
def test_cache_equals_full_recompute(model_and_sources, beam):
    model, src = model_and_sources
    with_cache = translate_ids(model, src, beam_size=beam, use_cache=True)
    without = translate_ids(model, src, beam_size=beam, use_cache=False)
    assert with_cache == without
    assert any(len(h) > 0 for h in with_cache)


@pytest.mark.parametrize("beam", [1, 3])
def test_batched_equals_one_by_one(model_and_sources, beam):
    model, src = model_and_sources
    batched = translate_ids(model, src, beam_size=beam)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int(src[i].ne(PAD_ID).sum())]
        assert translate_ids(model, row, beam_size=beam) == [batched[i]]


def test_length_limit_and_no_special_tokens(model_and_sources):
    model, src = model_and_sources
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.output.bias[EOS_ID] = -100.0  # never ends by itself
    for beam in (1, 3):
        hyps = translate_ids(model, src, beam_size=beam, max_len_a=0.0, max_len_b=4)
        assert all(len(h) == 4 for h in hyps)
        assert all(EOS_ID not in h and PAD_ID not in h for h in hyps)


def _ended_by_eos(src, hyps, a=1.5, b=10):
    """Whether each hypothesis is shorter than its length limit (so it ended with EOS)."""
    limits = (src.ne(PAD_ID).sum(1).float() * a + b).long().tolist()
    return [len(h) < limit for h, limit in zip(hyps, limits)]


def _sequence_logprob(model, src, hyp):
    memory, keep = model.encode(src)
    tgt_in = torch.tensor([[2] + hyp])
    tgt_out = torch.tensor([hyp + [EOS_ID]])
    logp = torch.log_softmax(model.decode(tgt_in, memory, keep), -1)
    return float(logp.gather(-1, tgt_out[..., None]).sum().detach())


def test_beam_without_length_penalty_scores_at_least_greedy_on_these_inputs(model_and_sources):
    """Beam search with alpha = 0 finds hypotheses at least as probable as greedy ones here.

    (Not a theorem: a beam can lose the greedy path. It holds for these inputs and this model; a failure after a
    change to the fixture is worth a look at the search before a change of inputs.)
    """
    model, src = model_and_sources
    greedy = greedy_search(model, src)
    beam = beam_search(model, src, beam_size=6, length_penalty=0.0)
    assert all(_ended_by_eos(src, beam)) and all(_ended_by_eos(src, greedy))
    for i in range(src.size(0)):
        row = src[i : i + 1]
        assert _sequence_logprob(model, row, beam[i]) >= _sequence_logprob(model, row, greedy[i]) - 1e-4
