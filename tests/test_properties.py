"""Property-based tests (hypothesis): whatever a user writes into a run config, a sweep file, an override or a
corpus file, the loaders either accept it or raise the project's own error (ConfigError, CorpusError), never a
bare KeyError, TypeError, AttributeError or a crash inside yaml, sentencepiece or the reader."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.config import ConfigError, config_from_dict, load_config
from model.corpora import CorpusError, read_parallel, read_text_lines, read_tsv
from sweeps.validate import load_sweep
from tests.helpers import TINY

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# values a YAML file can hold, nested
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)

RUN_KEYS = sorted(f"{section}.{key}" for section, body in TINY.items() for key in body) + [
    "model.norm", "gates.mode", "gates.penalty", "gates.attention", "train.schedule", "train.freeze",
    "data.corpus", "data.files", "eval.split", "train.precision", "data.joint_vocab"]
SWEEP_KEYS = ["name", "base", "method", "space", "objectives", "search", "prune", "pretrain", "resources",
              "baselines", "storage", "keep_checkpoints", "wandb", "search.sampler", "search.num_samples",
              "space.gates.penalty", "space.train.lr", "objectives.0", "prune.set", "resources.gpus"]


def _put(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def accepted_or_refused(record, what: str, load, error: type[Exception] = ConfigError, names: str | None = None):
    """``load()``'s result, or None when it raised ``error`` (whose message must then contain ``names``); any other
    exception fails the test. Each example is counted for docs/reliability.md."""
    try:
        result = load()
    except error as exc:
        assert names is None or names in str(exc), (names, str(exc))
        _SEEN.setdefault(what, Counter())["refused"] += 1
        return None
    _SEEN.setdefault(what, Counter())["accepted"] += 1
    return result


_SEEN: dict[str, Counter] = {}  # per test: what -> examples refused / accepted, recorded when the test ends


@pytest.fixture(autouse=True)
def _record_examples(record):
    """Each test's examples, counted as they ran, become one row of docs/reliability.md."""
    _SEEN.clear()
    yield
    for what, counts in _SEEN.items():
        record(what, examples=sum(counts.values()), **counts)
    _SEEN.clear()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(RUN_KEYS), values), min_size=1, max_size=4))
def test_any_value_in_a_run_config_is_accepted_or_a_config_error(record, changes):
    data = copy.deepcopy(TINY)
    for key, value in changes:
        _put(data, key, value)
    accepted_or_refused(record, "hypothesis: random values at run-config keys", lambda: config_from_dict(data))


@SETTINGS
@given(st.one_of(st.text(max_size=200).map(lambda t: t.encode("utf-8")), st.binary(max_size=200)))
def test_any_bytes_as_a_config_file_are_accepted_or_a_config_error(record, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_bytes(data)
    accepted_or_refused(record, "hypothesis: random text and bytes as a run-config file", lambda: load_config(path),
                        names=str(path))


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=3))
def test_any_override_is_accepted_or_a_config_error(record, overrides):
    accepted_or_refused(record, "hypothesis: random --set overrides", lambda: load_config(None, overrides))


GOOD_SWEEP = {"name": "p", "base": TINY, "prune": {"set": {"gates.mode": "learned"}},
              "space": {"gates.penalty": {"loguniform": [0.01, 0.5]}}, "wandb": {"mode": "disabled"}}


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(SWEEP_KEYS), values), min_size=1, max_size=3))
def test_any_value_in_a_sweep_is_accepted_or_a_config_error(record, tmp_path_factory, changes):
    data = copy.deepcopy(GOOD_SWEEP)
    for key, value in changes:
        _put(data, key, value)
    path = tmp_path_factory.mktemp("sweep") / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    accepted_or_refused(record, "hypothesis: random values at sweep keys", lambda: load_sweep(path))


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_a_sweep_file_is_accepted_or_a_config_error(record, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("sweep") / "s.yaml"
    path.write_text(text, encoding="utf-8")
    accepted_or_refused(record, "hypothesis: random text as a sweep file", lambda: load_sweep(path))


# bytes that stress the reader: UTF-8 text with BOMs, CRs, TABs, Unicode line separators, and invalid sequences
corpus_bytes = st.lists(st.one_of(st.text(max_size=20).map(lambda s: s.encode("utf-8")),
                                  st.sampled_from([b"\n", b"\r\n", b"\r", b"\t", b"\xef\xbb\xbf", b"\xe2\x80\xa8",
                                                   b"\xff", b"\xc3", b"\x00"])),
                        max_size=30).map(b"".join)


PARALLEL = "hypothesis: random bytes (BOM, CR, TAB, U+2028, invalid UTF-8, NUL) in parallel files"


@SETTINGS
@given(corpus_bytes, corpus_bytes)
def test_any_bytes_in_parallel_files_are_read_or_a_corpus_error(record, tmp_path_factory, src_bytes, tgt_bytes):
    folder = tmp_path_factory.mktemp("corpus")
    src, tgt = folder / "x.en", folder / "x.de"
    src.write_bytes(src_bytes)
    tgt.write_bytes(tgt_bytes)
    read = accepted_or_refused(record, PARALLEL, lambda: read_parallel(src, tgt, Counter()), CorpusError, "x.")
    if read is not None:  # lines split at \n only (a lone CR or U+2028 is text), line N beside line N
        a, b = read
        assert len(a) == len(b) and all("\n" not in line for line in a + b)


@SETTINGS
@given(corpus_bytes, st.booleans())
def test_any_bytes_in_a_tsv_are_read_or_a_corpus_error(record, tmp_path_factory, data, strict):
    path = tmp_path_factory.mktemp("corpus") / "x.tsv"
    path.write_bytes(data)
    read = accepted_or_refused(record, "hypothesis: random bytes in a TSV corpus",
                               lambda: read_tsv(path, Counter(), strict=strict), CorpusError, "x.tsv")
    if read is not None:
        a, b = read
        assert len(a) == len(b) and all("\t" not in line for line in a + b)


def test_a_missing_corpus_file_is_a_corpus_error(tmp_path: Path):
    with pytest.raises(CorpusError, match="x.en"):
        read_text_lines(tmp_path / "x.en", Counter())
