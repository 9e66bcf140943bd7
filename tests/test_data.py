import numpy as np
import pytest

from model.config import DataConfig, SyntheticConfig
from model.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SyntheticCorpus,
    build_tokenizers,
    collate,
    encode_split,
    eval_batches,
    load_data,
    make_batches,
)
from model.synthetic import generate_splits, make_lexicon


def test_synthetic_pair_is_deterministic_and_splits_are_disjoint():
    a = generate_splits(7, {"train": 300, "valid": 40, "test": 40})
    b = generate_splits(7, {"train": 300, "valid": 40, "test": 40})
    assert a == b
    assert generate_splits(8, {"train": 300})["train"] != a["train"]
    train, valid, test = (set(a[s][0]) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert all(len(a[s][0]) == len(a[s][1]) for s in a)


def test_synthetic_target_follows_its_grammar():
    """Verb last and agreeing with the subject; adjectives after the noun; no source word is copied."""
    lex = make_lexicon(3)
    pairs = list(zip(*generate_splits(3, {"train": 200})["train"]))
    verb_stems = set(lex.verb.values())
    suffixes = {m + v for m in lex.object_marker.values() for v in lex.verb_suffix.values()}
    for src, tgt in pairs:
        words = tgt.rstrip(".").lower().split()
        last = words[-1]
        assert any(last.startswith(stem) and last[len(stem):] in suffixes for stem in verb_stems), tgt
        assert not set(src.lower().rstrip(".").split()) & set(words) - {""}, (src, tgt)


def test_agreement_depends_on_the_distant_subject():
    lex = make_lexicon(3)
    pairs = list(zip(*generate_splits(3, {"train": 500})["train"]))
    noun_gender = {stem: g for stem, g in lex.noun.values()}
    checked = 0
    for src, tgt in pairs:
        words = tgt.rstrip(".").split()
        stem = words[1].lower()
        plural = stem.endswith(lex.plural_suffix) and stem[: -len(lex.plural_suffix)] in noun_gender
        stem = stem[: -len(lex.plural_suffix)] if plural else stem
        if stem not in noun_gender:
            continue
        suffix_options = {m + lex.verb_suffix[(noun_gender[stem], int(plural), p)]
                          for p in (False, True) for m in lex.object_marker.values()}
        assert any(words[-1].endswith(s) for s in suffix_options), (src, tgt)
        checked += 1
    assert checked > 400


def test_make_batches_respects_budget_and_covers_every_sentence_once():
    rng = np.random.default_rng(0)
    src_len, tgt_len = rng.integers(3, 40, 1000), rng.integers(3, 40, 1000)
    batches = make_batches(src_len, tgt_len, max_tokens=300, batch_size=None, bucket_size=10, seed=1, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    for b in batches:
        assert len(b) * max(max(src_len[i], tgt_len[i]) for i in b) <= 300
    again = make_batches(src_len, tgt_len, 300, None, 10, seed=1, epoch=0)
    assert again == batches
    assert make_batches(src_len, tgt_len, 300, None, 10, seed=1, epoch=1) != batches


def test_make_batches_by_sentences_and_length_bucketing_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 2000)
    by_count = make_batches(lengths, lengths, None, batch_size=32, bucket_size=20, seed=0, epoch=0)
    assert all(len(b) <= 32 for b in by_count) and sum(len(b) for b in by_count) == 2000

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    unbucketed = make_batches(lengths, lengths, None, batch_size=32, bucket_size=1, seed=0, epoch=0)
    assert padding(by_count) < 0.5 * padding(unbucketed)


@pytest.fixture(scope="module")
def small_data():
    cfg = DataConfig(synthetic=SyntheticConfig(train_size=300, valid_size=10, test_size=10), vocab_size=100)
    return cfg, load_data(cfg, "valid", log=lambda _: None)


def test_tokenizer_round_trip_and_special_ids(small_data):
    _, data = small_data
    tok = data.tokenizers
    lines = data.splits["valid"].src_text[:5]
    assert tok.src.decode(tok.src.encode(lines)) == lines
    assert tok.src.sp.pad_id() == PAD_ID and tok.src.sp.eos_id() == EOS_ID


def test_tokenizer_is_cached_by_content(small_data, tmp_path):
    cfg, data = small_data
    messages = []
    again = build_tokenizers(SyntheticCorpus(cfg), cfg, log=messages.append)
    assert messages == []  # loaded from the cache, not retrained
    assert again.src.proto == data.tokenizers.src.proto
    cfg2 = DataConfig(synthetic=SyntheticConfig(seed=99, train_size=300, valid_size=10, test_size=10), vocab_size=100)
    build_tokenizers(SyntheticCorpus(cfg2), cfg2, log=messages.append)
    assert len(messages) == 1  # another corpus trains another model


def test_separate_vocabularies(tmp_path):
    cfg = DataConfig(synthetic=SyntheticConfig(train_size=300, valid_size=10, test_size=10), vocab_size=100,
                     joint_vocab=False)
    tok = build_tokenizers(SyntheticCorpus(cfg), cfg, log=lambda _: None)
    assert tok.src is not tok.tgt and tok.src.proto != tok.tgt.proto


def test_collate_adds_bos_and_eos_and_pads(small_data):
    _, data = small_data
    split = data.splits["train"]
    batch = collate(split, [0, 1, 2])
    assert (batch.tgt_in[:, 0] == BOS_ID).all()
    for row, i in enumerate([0, 1, 2]):
        n = len(split.tgt[i])
        assert batch.tgt_out[row, n] == EOS_ID
        assert (batch.tgt_out[row, n + 1 :] == PAD_ID).all()
        assert batch.tgt_in[row, 1 : n + 1].tolist() == split.tgt[i].tolist()
        assert split.src[i][-1] == EOS_ID


def test_length_filter_counts_what_it_drops(small_data):
    _, data = small_data
    src, tgt = data.corpus.split("train")
    kept = encode_split(data.tokenizers, src, tgt, max_len=12)
    assert kept.dropped > 0 and len(kept) + kept.dropped == len(src)
    assert all(len(s) <= 12 and len(t) + 1 <= 12 for s, t in zip(kept.src, kept.tgt))


def test_held_out_split_is_cut_not_dropped(small_data):
    _, data = small_data
    src, tgt = data.splits["valid"].src_text, data.splits["valid"].tgt_text
    cut = encode_split(data.tokenizers, src, tgt, max_len=None, truncate=8)
    assert len(cut) == len(src) and cut.dropped == 0 and cut.truncated > 0
    assert all(len(s) <= 8 and s[-1] == EOS_ID and len(t) + 1 <= 8 for s, t in zip(cut.src, cut.tgt))
    assert cut.tgt_text == tgt  # references stay whole


def test_eval_batches_cover_the_limit_in_length_order(small_data):
    _, data = small_data
    split = data.splits["valid"]
    batches = eval_batches(split, batch_size=3, limit=8)
    assert sorted(i for b in batches for i in b) == list(range(8))
    lengths = [len(split.src[i]) for b in batches for i in b]
    assert lengths == sorted(lengths)
