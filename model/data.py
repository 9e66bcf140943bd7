"""Corpora -> sentencepiece -> batches.

A corpus source is anything with the :class:`Corpus` interface (a name, a fingerprint of its content and
settings, and ``split(name)`` giving aligned source/target lines). ``build_corpus`` picks one from
``data.corpus``; new sources (local files, downloads) register in ``CORPUS_SOURCES``.

sentencepiece models are trained once per corpus fingerprint + tokenizer settings and cached on disk, so every
run and every trial of a sweep that shares them reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import sentencepiece as spm
import torch

from .config import DataConfig
from .corpora import CorpusError, FilesCorpus, HuggingFaceCorpus, Multi30kCorpus, WmtEnRuCorpus, describe_stats
from .files import atomic_write, cache_root
from .synthetic import generate_splits

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")
IDS_FILES = ("src.npy", "src_offsets.npy", "tgt.npy", "tgt_offsets.npy", "stats.json")  # a token-id cache folder
IDS_MANIFEST = "sha256.json"  # their checksums, written last


class Corpus(Protocol):
    name: str

    def fingerprint(self) -> str:
        """A string that changes whenever the corpus content would change."""

    def split(self, name: str) -> tuple[list[str], list[str]]:
        """Aligned (source lines, target lines) of split ``name`` in SPLITS."""


class SyntheticCorpus:
    """The built-in synthetic language pair (see ``model.synthetic``)."""

    name = "synthetic"

    def __init__(self, cfg: DataConfig) -> None:
        s = cfg.synthetic
        self._settings = {
            "seed": s.seed, "max_modifiers": s.max_modifiers, "relative_clause_prob": s.relative_clause_prob,
            "sizes": {"train": s.train_size, "valid": s.valid_size, "test": s.test_size},
        }
        self._splits: dict[str, tuple[list[str], list[str]]] | None = None

    def fingerprint(self) -> str:
        """Settings plus a hash of the generated text, so that a change to the generator is a new corpus."""
        digest = hashlib.sha256()
        for name in SPLITS:
            for line in self.split(name)[0] + self.split(name)[1]:
                digest.update(line.encode("utf-8") + b"\n")
        return "synthetic:" + json.dumps(self._settings, sort_keys=True) + ":" + digest.hexdigest()[:16]

    def split(self, name: str) -> tuple[list[str], list[str]]:
        if self._splits is None:
            s = self._settings
            self._splits = generate_splits(s["seed"], s["sizes"], s["max_modifiers"], s["relative_clause_prob"])
        return self._splits[name]


CORPUS_SOURCES: dict[str, Callable[..., Corpus]] = {
    "synthetic": lambda cfg, log: SyntheticCorpus(cfg),
    "files": lambda cfg, log: FilesCorpus(cfg),
    "multi30k": Multi30kCorpus,
    "wmt_en_ru": WmtEnRuCorpus,
    "hf": HuggingFaceCorpus,
}


def build_corpus(cfg: DataConfig, log: Callable[[str], None] = print) -> Corpus:
    """The corpus source named by ``data.corpus``; each takes (config, log)."""
    return CORPUS_SOURCES[cfg.corpus](cfg, log)


# ---------------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer:
    """A sentencepiece model with the project's special ids (pad 0, unk 1, bos 2, eos 3)."""

    def __init__(self, model_proto: bytes) -> None:
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"sentencepiece model has special ids {ids}, expected (0, 1, 2, 3)")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)


@dataclass
class Tokenizers:
    src: Tokenizer
    tgt: Tokenizer
    joint: bool


def _train_sentencepiece(lines: Iterator[str], cfg: DataConfig) -> bytes:
    import io

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_writer=buffer,
        vocab_size=cfg.vocab_size,
        model_type=cfg.spm_model_type,
        character_coverage=cfg.character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        input_sentence_size=2_000_000, shuffle_input_sentence=True,
        hard_vocab_limit=False,  # a small corpus may have fewer pieces than vocab_size
        num_threads=1,  # one thread keeps training deterministic
        minloglevel=2,
    )
    return buffer.getvalue()


def tokenizer_key(corpus: Corpus, cfg: DataConfig, side: str) -> str:
    settings = {
        "corpus": corpus.fingerprint(), "side": side, "vocab_size": cfg.vocab_size,
        "model_type": cfg.spm_model_type, "character_coverage": cfg.character_coverage,
        "sentencepiece": spm.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_tokenizer(path: Path, log: Callable[[str], None]) -> Tokenizer | None:
    """The cached sentencepiece model at ``path`` if its bytes match the checksum written beside it; a damaged or
    unverifiable copy is reported and None returned (the caller trains the model again and overwrites it)."""
    if not path.exists():
        return None
    try:
        proto = path.read_bytes()
        expected = _checksum_file(path).read_text().strip()
    except OSError as exc:
        log(f"cached sentencepiece model {path} has no readable checksum ({exc.strerror or exc}): rebuilding it")
        return None
    if _sha256(proto) != expected:
        log(f"cached sentencepiece model {path} does not match its checksum (damaged): rebuilding it")
        return None
    try:
        return Tokenizer(proto)
    except (RuntimeError, ValueError) as exc:  # a checksummed file written by a foreign tool
        log(f"cached sentencepiece model {path} cannot be loaded ({exc}): rebuilding it")
        return None


def build_tokenizers(corpus: Corpus, cfg: DataConfig, log: Callable[[str], None] = print) -> Tokenizers:
    """Load cached sentencepiece models for ``corpus``, training (and caching) any that are missing."""
    models = {}
    for side in ("joint",) if cfg.joint_vocab else ("src", "tgt"):
        path = cache_root(cfg.cache_dir) / "spm" / f"{corpus.name}-{side}-{tokenizer_key(corpus, cfg, side)}.model"
        cached = _cached_tokenizer(path, log)
        if cached is not None:
            models[side] = cached
            continue
        src_train, tgt_train = corpus.split("train")
        lines = {"joint": src_train + tgt_train, "src": src_train, "tgt": tgt_train}[side]
        log(f"training sentencepiece ({side}, {cfg.vocab_size} pieces) -> {path}")
        proto = _train_sentencepiece(iter(lines), cfg)
        models[side] = Tokenizer(proto)
        try:  # the model, then its checksum: a model without a matching checksum is never used
            atomic_write(path, proto)
            atomic_write(_checksum_file(path), (_sha256(proto) + "\n").encode())
        except OSError as exc:
            log(f"warning: could not cache the sentencepiece model in {path.parent} ({exc.strerror or exc}); "
                "it is used from memory and trained again next time")
    if cfg.joint_vocab:
        return Tokenizers(models["joint"], models["joint"], joint=True)
    return Tokenizers(models["src"], models["tgt"], joint=False)


# ---------------------------------------------------------------------------------------------------
# Encoded splits and batches


@dataclass
class EncodedSplit:
    """Token ids of one split. ``src[i]`` ends with EOS; ``tgt[i]`` has no BOS/EOS (added per batch).

    ``src_text``/``tgt_text`` hold the raw lines of held-out splits (references for BLEU); a training split
    loaded from the token-id cache has none. ``stats`` counts what reading and filtering removed or repaired.
    """

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    src_text: list[str] = field(default_factory=list)
    tgt_text: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.src)

    @property
    def dropped(self) -> int:
        """Pairs removed by the filters (empty side, too long, length ratio)."""
        return sum(v for k, v in self.stats.items() if k.startswith("dropped_"))

    @property
    def truncated(self) -> int:
        return self.stats["truncated"]

    @property
    def src_lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.src), dtype=np.int64, count=len(self.src))

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.fromiter((len(t) + 1 for t in self.tgt), dtype=np.int64, count=len(self.tgt))


def encode_split(
    tok: Tokenizers,
    src_lines: list[str],
    tgt_lines: list[str],
    max_len: int | None = None,
    truncate: int | None = None,
    max_ratio: float | None = None,
    drop_empty: bool = False,
    keep_text: bool = True,
) -> EncodedSplit:
    """Tokenise a split, filtering training pairs or fitting held-out ones to the model.

    Training filters (each dropped pair is counted in ``stats``): ``drop_empty`` drops pairs with an empty side
    (``dropped_empty``); ``max_len`` pairs whose source+EOS or target+EOS exceeds it (``dropped_long``);
    ``max_ratio`` pairs whose longer side (+EOS) is more than that many times the shorter (``dropped_ratio``).
    With ``truncate`` (held-out splits, which keep every sentence), longer sides are cut to fit and counted in
    ``truncated``; references stay whole, so a cut source costs BLEU honestly.
    """
    src_ids, tgt_ids = tok.src.encode(src_lines), tok.tgt.encode(tgt_lines)
    out = EncodedSplit([], [])
    for s, t, s_text, t_text in zip(src_ids, tgt_ids, src_lines, tgt_lines):
        if drop_empty and (not s_text.strip() or not t_text.strip()):
            out.stats["dropped_empty"] += 1
            continue
        if max_len is not None and (len(s) + 1 > max_len or len(t) + 1 > max_len):
            out.stats["dropped_long"] += 1
            continue
        if max_ratio is not None and max(len(s) + 1, len(t) + 1) > max_ratio * min(len(s) + 1, len(t) + 1):
            out.stats["dropped_ratio"] += 1
            continue
        if truncate is not None and (len(s) + 1 > truncate or len(t) + 1 > truncate):
            s, t = s[: truncate - 1], t[: truncate - 1]
            out.stats["truncated"] += 1
        out.src.append(np.asarray(s + [EOS_ID], dtype=np.int32))
        out.tgt.append(np.asarray(t, dtype=np.int32))
        if keep_text:
            out.src_text.append(s_text)
            out.tgt_text.append(t_text)
    return out


@dataclass
class Batch:
    src: torch.Tensor  # [B, S]
    tgt_in: torch.Tensor  # [B, T], BOS + target
    tgt_out: torch.Tensor  # [B, T], target + EOS
    index: list[int]  # positions of the sentences in their split

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.index)

    @property
    def n_tokens(self) -> int:
        return int(self.tgt_out.ne(PAD_ID).sum())


def pad_rows(rows: list[np.ndarray], width: int) -> torch.Tensor:
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def collate(split: EncodedSplit, index: list[int]) -> Batch:
    src = [split.src[i] for i in index]
    tgt = [split.tgt[i] for i in index]
    tgt_in = [np.concatenate(([BOS_ID], t)) for t in tgt]
    tgt_out = [np.concatenate((t, [EOS_ID])) for t in tgt]
    width = max(len(t) for t in tgt_in)
    return Batch(pad_rows(src, max(len(s) for s in src)), pad_rows(tgt_in, width), pad_rows(tgt_out, width), list(index))


def make_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    max_tokens: int | None,
    batch_size: int | None,
    bucket_size: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """The batches of one epoch, a pure function of (lengths, settings, seed, epoch).

    Sentences are shuffled, cut into pools of about ``bucket_size`` batches, sorted by length within a pool
    (little padding), packed into batches (``batch_size`` sentences, or as many as fit ``max_tokens`` padded
    tokens of the longer side), and the batches are shuffled. Recomputing it from (seed, epoch) is what lets a
    resumed run continue with exactly the batches an unbroken run would see.
    """
    n = len(src_lengths)
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    longest = np.maximum(src_lengths, tgt_lengths)
    per_batch = batch_size or max(1, max_tokens // max(1, int(longest.mean())))
    pool = max(1, bucket_size * per_batch)
    batches: list[list[int]] = []
    for start in range(0, n, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: (tgt_lengths[i], src_lengths[i]))
        current: list[int] = []
        width = 0
        for i in chunk:
            new_width = max(width, int(longest[i]))
            full = len(current) >= batch_size if batch_size else new_width * (len(current) + 1) > max_tokens
            if current and full:
                batches.append(current)
                current, new_width = [], int(longest[i])
            current.append(i)
            width = new_width
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def eval_batches(split: EncodedSplit, batch_size: int, limit: int | None = None) -> list[list[int]]:
    """Batches of a held-out split, sorted by source length (little padding); indices into the split."""
    n = len(split) if limit is None else min(limit, len(split))
    order = sorted(range(n), key=lambda i: len(split.src[i]))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


@dataclass
class Data:
    """Everything a run needs from its corpus."""

    corpus: Corpus
    tokenizers: Tokenizers
    splits: dict[str, EncodedSplit]

    @property
    def stats(self) -> dict[str, Counter]:
        """Per split: what reading repaired (bom, crlf) and what filtering dropped or cut."""
        return {name: split.stats for name, split in self.splits.items()}


def _proto_hash(tok: Tokenizer) -> str:
    return _sha256(tok.proto)[:16]


def _ids_cache_dir(corpus: Corpus, tok: Tokenizers, cfg: DataConfig) -> Path:
    settings = {"corpus": corpus.fingerprint(), "src": _proto_hash(tok.src), "tgt": _proto_hash(tok.tgt),
                "max_len": cfg.max_len, "max_ratio": cfg.max_ratio, "format": 2}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cfg.cache_dir) / "ids" / f"{corpus.name}-train-{key}"


def _save_ids(folder: Path, split: EncodedSplit) -> None:
    """Write a split's ids as flat arrays + offsets into ``folder`` atomically (a temporary folder renamed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for side in ("src", "tgt"):
            rows = getattr(split, side)
            np.save(tmp / f"{side}.npy", np.concatenate(rows) if rows else np.zeros(0, np.int32))
            np.save(tmp / f"{side}_offsets.npy", np.cumsum([0] + [len(r) for r in rows], dtype=np.int64))
        (tmp / "stats.json").write_text(json.dumps(dict(split.stats)))
        sums = {name: _sha256((tmp / name).read_bytes()) for name in IDS_FILES}
        (tmp / IDS_MANIFEST).write_text(json.dumps(sums, sort_keys=True))  # written last: marks a complete folder
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Remove a damaged cache folder: renamed away first, so that no reader sees it half-deleted."""
    aside = folder.with_name(f".{folder.name}.damaged.{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError:
        return  # already gone (another process rebuilt it)
    shutil.rmtree(aside, ignore_errors=True)


def _load_ids(folder: Path, log: Callable[[str], None] = print) -> EncodedSplit | None:
    """A split from the token-id cache (memory-mapped), or None when absent; a folder whose files do not match the
    checksums written with them, or cannot be read, is reported and None returned (the caller rebuilds it)."""
    if not folder.exists():
        return None
    try:
        sums = json.loads((folder / IDS_MANIFEST).read_text())
        damaged = [name for name in IDS_FILES if _sha256((folder / name).read_bytes()) != sums.get(name)]
    except (OSError, ValueError, AttributeError) as exc:
        log(f"token-id cache {folder} is incomplete or unreadable ({exc}): rebuilding it")
        _discard(folder)
        return None
    if damaged:
        log(f"token-id cache {folder}: {', '.join(damaged)} do not match their checksums (damaged): rebuilding it")
        _discard(folder)
        return None
    try:
        split = EncodedSplit([], [], stats=Counter(json.loads((folder / "stats.json").read_text())))
        for side in ("src", "tgt"):
            flat = np.load(folder / f"{side}.npy", mmap_mode="r")
            offsets = np.load(folder / f"{side}_offsets.npy")
            if offsets[-1] != len(flat):
                return None
            setattr(split, side, [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    except (OSError, ValueError):
        return None
    return split if len(split.src) == len(split.tgt) else None


def load_data(
    cfg: DataConfig, eval_split: str, log: Callable[[str], None] = print, tokenizers: Tokenizers | None = None,
    max_positions: int | None = None,
) -> Data:
    """Build the corpus, its tokenizers (unless given, e.g. by a checkpoint), the encoded train split (from the
    token-id cache when this corpus and these tokenizers were seen before) and the held-out ``eval_split``
    (cut to ``max_positions`` tokens where longer, and counted). Prints what was repaired or dropped."""
    corpus = build_corpus(cfg, log)
    tok = tokenizers or build_tokenizers(corpus, cfg, log)
    cache = _ids_cache_dir(corpus, tok, cfg)
    train = _load_ids(cache, log)
    if train is None:
        train = encode_split(tok, *corpus.split("train"), max_len=cfg.max_len, max_ratio=cfg.max_ratio,
                             drop_empty=True, keep_text=False)
        train.stats.update(getattr(corpus, "stats", {}).get("train", {}))
        try:
            _save_ids(cache, train)
        except OSError as exc:  # e.g. a full disk: the cache is only a speed-up
            log(f"warning: could not write the token-id cache {cache} ({exc.strerror or exc}); "
                "the split is used from memory and encoded again next time")
    if len(train) == 0:
        raise CorpusError(f"corpus {corpus.name!r}: no training pair is left after filtering "
                         f"({describe_stats({'train': train.stats}) or 'the corpus is empty'})")
    held_out = encode_split(tok, *corpus.split(eval_split), truncate=max_positions)
    held_out.stats.update(getattr(corpus, "stats", {}).get(eval_split, {}))
    data = Data(corpus, tok, {"train": train, eval_split: held_out})
    summary = describe_stats(data.stats)
    log(f"data: {len(train)} training pairs, {len(held_out)} {eval_split} pairs" + (f"; {summary}" if summary else ""))
    return data
