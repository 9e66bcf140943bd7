"""Local corpora, downloads with checksums and locks, bad data: each a clear error or a counted repair/skip."""

from __future__ import annotations

import gzip
import http.server
import re
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from model import data as data_module
from model.config import ConfigError, DataConfig, FilesConfig
from model.corpora import CorpusError, FilesCorpus, Multi30kCorpus, fetch, read_parallel, read_text_lines, read_tsv
from model.data import load_data
from tests.helpers import REPO, tiny_config

SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "multi30k").is_dir(),
                                  reason=f"shared corpora not found at {SHARED} (only on the project's machines)")

EN = ["A dog runs.", "Two men talk.", "A girl reads a book.", "The sun shines.", "A cat sleeps on a mat."] * 8
DE = ["Ein Hund rennt.", "Zwei Männer reden.", "Ein Mädchen liest ein Buch.", "Die Sonne scheint.",
      "Eine Katze schläft auf einer Matte."] * 8


def write_pair(folder: Path, prefix: str, src: list[str], tgt: list[str], raw: dict[str, bytes] | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}.en").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{prefix}.de").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")
    for lang, content in (raw or {}).items():
        (folder / f"{prefix}.{lang}").write_bytes(content)
    return str(folder / prefix)


def files_config(tmp_path: Path, **raw) -> DataConfig:
    train = write_pair(tmp_path, "train", EN, DE, raw)
    valid = write_pair(tmp_path, "valid", EN[:5], DE[:5])
    return DataConfig(corpus="files", files=FilesConfig(train=train, valid=valid), vocab_size=60,
                      cache_dir=str(tmp_path / "cache"), max_len=64)


# -- reading ------------------------------------------------------------------------------------------


def test_bom_and_crlf_are_repaired_and_counted(tmp_path, record):
    path = tmp_path / "x.en"
    path.write_bytes(b"\xef\xbb\xbfFirst line\r\nSecond line\r\nThird\n")
    stats = Counter()
    assert read_text_lines(path, stats) == ["First line", "Second line", "Third"]
    assert stats == {"bom": 1, "crlf": 2}
    record("corpus with a BOM and CRLF line ends", boms_repaired=stats["bom"], crlf_repaired=stats["crlf"])


def test_invalid_utf8_names_file_and_line(tmp_path, record):
    path = tmp_path / "bad.de"
    path.write_bytes("ok\nstill ok\nkaputt: ".encode() + b"\xff\xfe" + b"\n")
    with pytest.raises(CorpusError, match=r"bad\.de:3: invalid UTF-8 at byte 9") as refusal:
        read_text_lines(path, Counter())
    where = re.search(r"bad\.de:(\d+): invalid UTF-8 at byte (\d+)", str(refusal.value))
    record("corpus with invalid UTF-8", refused_at_line=int(where.group(1)), at_byte=int(where.group(2)))


def test_unicode_line_separators_are_not_line_breaks(tmp_path):
    path = tmp_path / "x.en"
    path.write_text("one\u2028still one\x85too\nsecond\n", encoding="utf-8")
    assert len(read_text_lines(path, Counter())) == 2


def test_mismatched_line_counts_name_both_files(tmp_path, record):
    write_pair(tmp_path, "train", EN, DE[:-1])
    with pytest.raises(CorpusError, match=r"train\.en has 40 lines but .*train\.de has 39") as refusal:
        read_parallel(tmp_path / "train.en", tmp_path / "train.de", Counter())
    counts = [int(n) for n in re.findall(r"has (\d+)", str(refusal.value))]
    assert counts == [40, 39], refusal.value
    record("parallel files with different line counts", refused_naming_counts=len(counts),
           lines_named=" vs ".join(map(str, counts)))


def test_tab_inside_a_tsv_field_names_the_line(tmp_path, record):
    path = tmp_path / "train.tsv"
    path.write_text("a dog\tein Hund\nthe\tcat\tdie Katze\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.tsv:2: 3 tab-separated fields, expected 2") as refusal:
        read_tsv(path, Counter())
    line = int(re.search(r"train\.tsv:(\d+):", str(refusal.value)).group(1))
    record("TAB inside a TSV field", refused_at_line=line)


def test_tsv_corpus_trains(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(EN, DE)), encoding="utf-8")
    cfg = DataConfig(corpus="files", files=FilesConfig(format="tsv", train=str(tsv), valid=str(tsv)),
                     vocab_size=60, cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, "valid", log=lambda _: None)
    assert len(data.splits["train"]) == 40 and data.splits["valid"].tgt_text[0] == DE[0]


def test_empty_lines_and_extreme_ratios_are_dropped_from_training_and_counted(tmp_path, record):
    src, tgt = list(EN), list(DE)
    src[3], tgt[7] = "", "   "
    src[10] = "A " + "very " * 40 + "long source."  # ratio far above 3 against a short target
    src[12], tgt[12] = "a b c d " * 40, "e f g h " * 40  # over max_len pieces on both sides (ratio fine)
    train = write_pair(tmp_path, "train", src, tgt)
    valid = write_pair(tmp_path, "valid", ["", "A dog runs."], ["", "Ein Hund rennt."])
    cfg = DataConfig(corpus="files", files=FilesConfig(train=train, valid=valid), vocab_size=60,
                     cache_dir=str(tmp_path / "cache"), max_len=150, max_ratio=3.0)
    messages = []
    data = load_data(cfg, "valid", log=messages.append)
    stats = data.stats["train"]
    assert stats["dropped_empty"] == 2 and stats["dropped_ratio"] == 1 and stats["dropped_long"] == 1, stats
    assert len(data.splits["train"]) == 36
    assert len(data.splits["valid"]) == 2  # held-out sentences are never dropped
    assert any("dropped_empty=2" in m and "dropped_ratio=1" in m and "dropped_long=1" in m for m in messages)
    record("empty lines, over-long lines and extreme length ratios in training data",
           pairs_written=len(src), pairs_kept=len(data.splits["train"]),
           dropped_and_counted=stats["dropped_empty"] + stats["dropped_ratio"] + stats["dropped_long"])


def test_empty_corpus_after_filtering_is_an_error(tmp_path, record):
    train = write_pair(tmp_path, "train", ["", " "], ["x", "y"])
    valid = write_pair(tmp_path, "valid", EN[:2], DE[:2])
    cfg = DataConfig(corpus="files", files=FilesConfig(train=train, valid=valid), vocab_size=60,
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CorpusError, match="no training pair is left.*dropped_empty=2") as refusal:
        load_data(cfg, "valid", log=lambda _: None)
    dropped = int(re.search(r"dropped_empty=(\d+)", str(refusal.value)).group(1))
    record("nothing left after filtering", refused_naming_dropped_pairs=dropped)


def test_missing_files_and_settings(tmp_path):
    cfg = DataConfig(corpus="files", files=FilesConfig(train=str(tmp_path / "nope"), valid=str(tmp_path / "nope")))
    with pytest.raises(CorpusError, match=r"data\.files\.train: no such file .*nope\.en"):
        FilesCorpus(cfg).split("train")
    with pytest.raises(ConfigError, match=r"data\.files\.train"):
        tiny_config("data.corpus=files")
    with pytest.raises(ConfigError, match=r"data\.files\.test"):
        tiny_config("data.corpus=files", "data.files.train=a", "eval.split=test")
    with pytest.raises(ConfigError, match=r"data\.tgt_lang"):
        tiny_config("data.tgt_lang=en")
    with pytest.raises(ConfigError, match=r"data\.max_ratio"):
        tiny_config("data.max_ratio=0.5")


def test_run_stores_its_data_counts(tmp_path):
    import json

    from model.train import DATA_STATS_FILE, train

    src = list(EN)
    src[0] = ""
    train_prefix = write_pair(tmp_path / "corpus", "train", src, DE, {"de": ("\r\n".join(DE) + "\r\n").encode()})
    valid = write_pair(tmp_path / "corpus", "valid", EN[:4], DE[:4])
    cfg = tiny_config("data.corpus=files", f"data.files.train={train_prefix}", f"data.files.valid={valid}",
                      "data.vocab_size=60", "train.max_steps=2", "train.eval_every=2")
    train(cfg, tmp_path / "run", log=lambda _: None)
    stats = json.loads((tmp_path / "run" / DATA_STATS_FILE).read_text())
    assert stats["train"] == {"crlf": 40, "dropped_empty": 1}


# -- token-id cache -------------------------------------------------------------------------------------


def test_training_ids_are_cached_and_reused(tmp_path, monkeypatch):
    cfg = files_config(tmp_path)
    first = load_data(cfg, "valid", log=lambda _: None)
    calls = {"n": 0}
    real = data_module.encode_split

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(data_module, "encode_split", counting)
    second = load_data(cfg, "valid", log=lambda _: None)
    assert calls["n"] == 1  # the held-out split only
    assert [a.tolist() for a in first.splits["train"].src] == [a.tolist() for a in second.splits["train"].src]
    assert [a.tolist() for a in first.splits["train"].tgt] == [a.tolist() for a in second.splits["train"].tgt]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a token id changes; the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["offsets", "one token id", "no checksums"])
def test_a_damaged_id_cache_is_detected_and_rebuilt(tmp_path, damage, record):
    cfg = files_config(tmp_path)
    first = load_data(cfg, "valid", log=lambda _: None)
    (cache,) = (Path(cfg.cache_dir) / "ids").iterdir()
    if damage == "offsets":
        np.save(cache / "src_offsets.npy", np.array([0, 5, 999], dtype=np.int64))
    elif damage == "one token id":
        _flip_last_byte(cache / "tgt.npy")
    else:
        (cache / "sha256.json").unlink()
    messages = []
    again = load_data(cfg, "valid", log=messages.append)
    assert any(str(cache) in m and "rebuilding" in m for m in messages), messages
    same = all([a.tolist() for a in getattr(again.splits["train"], side)]
               == [a.tolist() for a in getattr(first.splits["train"], side)] for side in ("src", "tgt"))
    assert same
    again_messages = list(messages)
    messages.clear()
    load_data(cfg, "valid", log=messages.append)  # the rebuilt cache is whole again
    assert not any("rebuilding" in m for m in messages), messages
    record("damaged token-id cache (offsets, one token id, no checksums)",
           rebuild_messages=sum("rebuilding" in m for m in again_messages), ids_equal_to_first_build=int(same))


@pytest.mark.parametrize("damage", ["one byte", "garbage", "no checksum"])
def test_a_damaged_sentencepiece_model_is_detected_and_trained_again(tmp_path, damage, record):
    cfg = files_config(tmp_path)
    first = load_data(cfg, "valid", log=lambda _: None)
    (model,) = (Path(cfg.cache_dir) / "spm").glob("*.model")
    if damage == "one byte":
        _flip_last_byte(model)
    elif damage == "garbage":
        model.write_bytes(b"not a sentencepiece model")
    else:
        model.with_name(model.name + ".sha256").unlink()
    messages = []
    again = load_data(cfg, "valid", log=messages.append)
    assert any(str(model) in m and "rebuilding" in m for m in messages), messages
    assert any("training sentencepiece" in m for m in messages)
    same = again.tokenizers.src.proto == first.tokenizers.src.proto == model.read_bytes()  # deterministic retraining
    assert same
    record("damaged sentencepiece model (one byte, garbage, no checksum)",
           rebuild_messages=sum(str(model) in m and "rebuilding" in m for m in messages),
           retrained_equal_to_first=int(same))


def test_changed_corpus_file_gets_new_tokenizer_and_ids(tmp_path):
    cfg = files_config(tmp_path)
    load_data(cfg, "valid", log=lambda _: None)
    write_pair(tmp_path, "train", EN[::-1], DE[::-1])
    messages = []
    load_data(cfg, "valid", log=messages.append)
    assert any("training sentencepiece" in m for m in messages)


# -- downloads ------------------------------------------------------------------------------------------


class _Server:
    """A static HTTP server on 127.0.0.1 over ``root``, counting requests per path."""

    def __init__(self, root: Path) -> None:
        hits: Counter = Counter()
        self.hits = hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                hits[self.path] += 1
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


MIRROR_SIZES = {"train": 60, "val": 30, "test_2016_flickr": 20}


@pytest.fixture
def multi30k_mirror(tmp_path_factory, monkeypatch):
    """A Multi30k mirror of the project's own files, gzipped as the upstream repository publishes them, with the
    corpus's expected checksums set to theirs: the download, lock and checksum logic without the real corpus."""
    from model.corpora import sha256_file

    root, plain = tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("plain")
    sums = {}
    for stem, n in MIRROR_SIZES.items():
        for lang, words in (("en", EN), ("de", DE)):
            path = plain / f"{stem}.{lang}"
            path.write_text("".join(f"{words[i % len(words)]} {stem} {i}\n" for i in range(n)), encoding="utf-8")
            sums[path.name] = sha256_file(path)[:16]
            with open(path, "rb") as src, gzip.open(root / f"{path.name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
    monkeypatch.setattr(Multi30kCorpus, "SHA256", sums)
    return root


def test_multi30k_downloads_verifies_and_then_works_offline(tmp_path, multi30k_mirror):
    with _Server(multi30k_mirror) as server:
        cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "data"), mirror=server.url)
        src, tgt = Multi30kCorpus(cfg, log=lambda _: None).split("valid")
        assert len(src) == len(tgt) == MIRROR_SIZES["val"]
        assert server.hits["/val.en.gz"] == 1
    # the server is gone: a filled folder needs no network
    cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "data"), mirror="http://127.0.0.1:9")
    assert Multi30kCorpus(cfg, log=lambda _: None).split("valid")[0] == src
    assert not list((tmp_path / "data" / "multi30k").glob("*.part"))


def test_concurrent_trials_download_once(tmp_path, multi30k_mirror):
    cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "data"))
    with _Server(multi30k_mirror) as server:
        cfg.mirror = server.url
        results, errors = [], []

        def fetch_test():
            try:
                results.append(Multi30kCorpus(cfg, log=lambda _: None).split("test"))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=fetch_test) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == 4 and all(r == results[0] for r in results)
    assert len(results[0][0]) == MIRROR_SIZES["test_2016_flickr"]
    assert server.hits["/test_2016_flickr.en.gz"] == 1 and server.hits["/test_2016_flickr.de.gz"] == 1


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, multi30k_mirror, record):
    bad = tmp_path / "badmirror"
    bad.mkdir()
    with gzip.open(bad / "val.en.gz", "wt", encoding="utf-8") as f:
        f.write("not the real file\n")
    dest = tmp_path / "data" / "val.en"
    dest.parent.mkdir()
    expected = Multi30kCorpus.SHA256["val.en"]
    with pytest.raises(CorpusError, match=rf"does not match the expected {expected}") as refusal:
        fetch((bad / "val.en.gz").as_uri(), dest, expected, gunzip=True, log=lambda _: None)
    left = [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")]
    assert left == []
    record("download with a wrong checksum", refusals_naming_the_checksum=str(refusal.value).count(expected),
           files_left=len(left))


def test_a_corrupted_download_is_fetched_again(tmp_path, multi30k_mirror, record):
    cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "data"), mirror=multi30k_mirror.as_uri())
    Multi30kCorpus(cfg, log=lambda _: None).split("valid")
    (tmp_path / "data" / "multi30k" / "val.de").write_text("damaged\n")
    messages = []
    src, tgt = Multi30kCorpus(cfg, log=messages.append).split("valid")
    assert len(tgt) == MIRROR_SIZES["val"] and any("fails its checksum" in m for m in messages)
    record("corrupted downloaded file", checksum_failures_reported=sum("fails its checksum" in m for m in messages),
           lines_after_fetching_again=len(tgt))


def test_unreachable_download_says_where_to_put_the_file(tmp_path):
    cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "data"), mirror="http://127.0.0.1:9")
    with pytest.raises(CorpusError, match=r"cannot download .*val\.en\.gz.*place the file at"):
        Multi30kCorpus(cfg, log=lambda _: None).split("valid")


def test_multi30k_has_only_english_and_german():
    with pytest.raises(CorpusError, match="languages en and de"):
        Multi30kCorpus(DataConfig(corpus="multi30k", src_lang="en", tgt_lang="fr"))


@needs_shared
def test_shared_multi30k_reads_as_published(tmp_path, record):
    """The read-only shared copy verifies; train.de line 7366 keeps its TAB (a plain file, not TSV)."""
    cfg = DataConfig(corpus="multi30k", data_dir=str(SHARED))
    corpus = Multi30kCorpus(cfg, log=lambda _: None)
    src, tgt = corpus.split("train")
    assert len(src) == len(tgt) == 29000
    assert "\t" in tgt[7365]
    assert sum(len(corpus.split(s)[0]) for s in ("valid", "test")) == 2014
    assert corpus.stats["train"] == Counter()
    record("Multi30k as published (train.de line 7366 has a TAB)", training_pairs_read=len(src),
           lines_repaired_or_dropped=sum(corpus.stats["train"].values()))


# -- WMT news-commentary en-ru + sacrebleu test sets ------------------------------------------------


@pytest.fixture
def wmt_offline(tmp_path, monkeypatch):
    """A news-commentary mirror of 300 EN-RU pairs (and two malformed lines), and sacrebleu's folders pre-filled
    with newstest2013/2014 of their published sizes (3000 and 3003 lines), so that sacrebleu's own API serves them
    without a network. Built here: the test needs neither a network nor the shared corpora."""
    from sacrebleu.dataset import DATASETS

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    en = [f"Sentence {i} is about the markets." for i in range(300)]
    ru = [f"Предложение {i} о рынках." for i in range(300)]
    lines = [f"{a}\t{b}" for a, b in zip(en, ru)] + ["only one field", "a\tb\tc"]
    with gzip.open(mirror / "news-commentary-v14.en-ru.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name, n in (("wmt13", 3000), ("wmt14", 3003)):
        out = tmp_path / "sacrebleu" / name
        out.mkdir(parents=True)
        (out / f"{name}.en-ru.src").write_text("".join(f"{name} line {i}.\n" for i in range(n)), encoding="utf-8")
        (out / f"{name}.en-ru.ref").write_text("".join(f"{name} строка {i}.\n" for i in range(n)), encoding="utf-8")
        for field in ("docid", "genre", "origlang"):
            (out / f"{name}.en-ru.{field}").write_text("x\n" * n)
        monkeypatch.setattr(DATASETS[name], "_outdir", str(out))
    return mirror


def test_wmt_en_ru_reads_news_commentary_and_sacrebleu_sets(tmp_path, wmt_offline):
    from model.corpora import WmtEnRuCorpus

    cfg = DataConfig(corpus="wmt_en_ru", src_lang="en", tgt_lang="ru", data_dir=str(tmp_path / "data"),
                     mirror=wmt_offline.as_uri())
    corpus = WmtEnRuCorpus(cfg, log=lambda _: None)
    src, tgt = corpus.split("train")
    assert len(src) == len(tgt) == 300 and corpus.stats["train"]["skipped_fields"] == 2
    assert len(corpus.split("valid")[0]) == 3000 and len(corpus.split("test")[0]) == 3003
    record = tmp_path / "data" / "wmt_en_ru" / "news-commentary-v14.en-ru.tsv.sha256"
    assert record.is_file()  # no published checksum: the first download's is recorded ...
    (tmp_path / "data" / "wmt_en_ru" / "news-commentary-v14.en-ru.tsv").write_text("tampered\tx\n")
    messages = []
    again = WmtEnRuCorpus(cfg, log=messages.append).split("train")  # ... and enforced
    assert again[0] == src and any("fails its checksum" in m for m in messages)
    reverse = WmtEnRuCorpus(DataConfig(corpus="wmt_en_ru", src_lang="ru", tgt_lang="en",
                                       data_dir=str(tmp_path / "data")), log=lambda _: None)
    assert reverse.split("train")[0] == tgt


def test_file_paths_expand_environment_variables(tmp_path, monkeypatch):
    write_pair(tmp_path / "c", "train", EN, DE)
    monkeypatch.setenv("MY_CORPORA", str(tmp_path / "c"))
    cfg = DataConfig(corpus="files", files=FilesConfig(train="$MY_CORPORA/train", valid="$NOT_SET_ANYWHERE/x"))
    assert len(FilesCorpus(cfg).split("train")[0]) == 40
    with pytest.raises(CorpusError, match="NOT_SET_ANYWHERE"):
        FilesCorpus(cfg).split("valid")


def test_lenient_tsv_skips_and_counts(tmp_path, record):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\nbroken line\nc\td\n", encoding="utf-8")
    cfg = DataConfig(corpus="files", files=FilesConfig(format="tsv", on_bad_line="skip", train=str(path),
                                                       valid=str(path)))
    corpus = FilesCorpus(cfg)
    assert corpus.split("train") == (["a", "c"], ["b", "d"]) and corpus.stats["train"]["skipped_fields"] == 1
    record("bad TSV lines with on_bad_line: skip", lines=len(path.read_text().splitlines()), skipped_and_counted=corpus.stats["train"]["skipped_fields"])


def test_hugging_face_source_maps_translation_rows(tmp_path, monkeypatch):
    """The hf source reads `translation` rows through `datasets.load_dataset` (a stand-in module here: the
    package is optional and the hub is not reachable from the tests)."""
    import sys
    import types

    from model.corpora import HuggingFaceCorpus

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        rows = [{"translation": {"en": e, "de": d}} for e, d in zip(EN, DE)]
        return rows if split == "train" else rows[:3]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = DataConfig(corpus="hf", hf_name="wmt14/de-en", src_lang="de", tgt_lang="en", vocab_size=60,
                     cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, "valid", log=lambda _: None)
    assert len(data.splits["train"]) == 40 and data.splits["valid"].src_text[0] == DE[0]
    assert ("wmt14", "de-en", "validation") in calls
    with pytest.raises(CorpusError, match="no 'en'/'fr' fields"):
        HuggingFaceCorpus(DataConfig(corpus="hf", hf_name="x", tgt_lang="fr")).split("train")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CorpusError, match=r"pip install -e '\.\[hf\]'"):
        HuggingFaceCorpus(cfg)
