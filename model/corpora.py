"""Real corpora: local parallel files or TSV, and downloads of known corpora with checksums.

Reading is strict about structure and explicit about repairs. Structural problems are errors that name the file
and line: mismatched line counts, invalid UTF-8, a TSV line without exactly two fields (a TAB inside a sentence,
as on line 7366 of Multi30k's ``train.de``). Harmless encoding noise is repaired and counted: a byte-order mark,
CRLF line endings. Content filters (empty lines, over-long pairs, length ratio) are applied to training pairs
when they are tokenised, and counted there (``model.data.encode_split``).

Downloads go to ``data.data_dir`` (``$HEADSWEEP_DATA``, else ``<cache>/data``), are verified against the
checksums below, written atomically (a temporary file renamed into place) under a file lock (several trials may
start at once), and are not fetched again once present and verified, so a filled folder works offline.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable

from .config import DataConfig
from .files import atomic_write, cache_root, file_lock

BOM = b"\xef\xbb\xbf"


class CorpusError(ValueError):
    """A corpus file is missing, malformed or fails its checksum."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text_lines(path: Path, stats: Counter) -> list[str]:
    """Lines of a UTF-8 text file (LF-separated; a final newline is optional).

    A leading byte-order mark and CR before LF are removed and counted in ``stats`` (``bom``, ``crlf``).
    Invalid UTF-8 raises :class:`CorpusError` with the line number.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from exc
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
        stats["bom"] += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CorpusError(f"{path}:{line}: invalid UTF-8 at byte {column} of the line ({exc.reason})") from None
    lines = text.split("\n")  # not splitlines(): U+2028 and friends are text, not line breaks
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            lines[i] = line[:-1]
            stats["crlf"] += 1
    return lines


def read_parallel(src_path: Path, tgt_path: Path, stats: Counter) -> tuple[list[str], list[str]]:
    src, tgt = read_text_lines(src_path, stats), read_text_lines(tgt_path, stats)
    if len(src) != len(tgt):
        raise CorpusError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; line N of one must "
                          f"translate line N of the other")
    return src, tgt


def read_tsv(path: Path, stats: Counter, strict: bool = True) -> tuple[list[str], list[str]]:
    """(source, target) columns of a two-column TSV file. A line with another number of fields is an error
    naming the line, or (``strict=False``, for downloaded corpora known to hold a few) skipped and counted as
    ``skipped_fields``."""
    src, tgt = [], []
    for n, line in enumerate(read_text_lines(path, stats), 1):
        fields = line.split("\t")
        if len(fields) != 2 and not strict:
            stats["skipped_fields"] += 1
            continue
        if len(fields) != 2:
            raise CorpusError(
                f"{path}:{n}: {len(fields)} tab-separated fields, expected 2 (source<TAB>target); a TAB inside a "
                f"sentence cannot be told from the separator: store such a corpus as two plain files"
            )
        src.append(fields[0])
        tgt.append(fields[1])
    return src, tgt


class _FileBacked:
    """Shared behaviour of corpora read from files: per-split repair counts and a content fingerprint."""

    name = "files"

    def __init__(self) -> None:
        self.stats: dict[str, Counter] = {}
        self._cache: dict[str, tuple[list[str], list[str]]] = {}
        self._fingerprint: str | None = None

    def paths(self, split: str) -> list[Path]:
        raise NotImplementedError

    def _read(self, split: str, stats: Counter) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def split(self, name: str) -> tuple[list[str], list[str]]:
        if name not in self._cache:
            stats = Counter()
            self._cache[name] = self._read(name, stats)
            self.stats[name] = stats
        return self._cache[name]

    def fingerprint(self) -> str:
        """Hash of the training files' content (what the tokenizers are trained on) and of the reading rules."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{type(self).__name__}:v1".encode())
            for path in self.paths("train"):
                digest.update(sha256_file(path).encode())
            self._fingerprint = f"{self.name}:" + digest.hexdigest()[:16]
        return self._fingerprint


class FilesCorpus(_FileBacked):
    """``data.corpus: files``: ``PREFIX.<lang>`` pairs or TSV files named in ``data.files``."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = f"files-{cfg.src_lang}-{cfg.tgt_lang}"

    def paths(self, split: str) -> list[Path]:
        where = getattr(self.cfg.files, split)
        if where is None:
            raise CorpusError(f"data.files.{split} is not set; name a file prefix (parallel) or a .tsv file")
        expanded = os.path.expandvars(where)
        if "$" in expanded:
            raise CorpusError(f"data.files.{split}: {where!r} names an environment variable that is not set")
        base = Path(expanded).expanduser()
        if self.cfg.files.format == "tsv":
            paths = [base]
        else:
            paths = [base.with_name(f"{base.name}.{lang}") for lang in (self.cfg.src_lang, self.cfg.tgt_lang)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CorpusError(f"data.files.{split}: no such file {', '.join(missing)}")
        return paths

    def _read(self, split: str, stats: Counter) -> tuple[list[str], list[str]]:
        paths = self.paths(split)
        if self.cfg.files.format == "tsv":
            return read_tsv(paths[0], stats, strict=self.cfg.files.on_bad_line == "error")
        return read_parallel(*paths, stats)


# ---------------------------------------------------------------------------------------------------
# Downloads


def data_root(cfg: DataConfig) -> Path:
    """Where downloaded corpora live: ``data.data_dir``, else ``$HEADSWEEP_DATA``, else ``<cache>/data``."""
    root = cfg.data_dir or os.environ.get("HEADSWEEP_DATA") or cache_root(cfg.cache_dir) / "data"
    return Path(root).expanduser().resolve()


def fetch(url: str, dest: Path, sha256_prefix: str | None, gunzip: bool, log: Callable[[str], None] = print) -> Path:
    """Download ``url`` to ``dest`` (gunzipped if asked) unless ``dest`` already holds the verified file.

    ``sha256_prefix`` is the start of the sha256 of the final (decompressed) file. Where no checksum is
    published (None), the first download's sha256 is recorded in ``dest.sha256`` and later reads are checked
    against it. Concurrent callers wait on a lock next to ``dest``; a failed or mismatching download leaves
    nothing at ``dest``.
    """
    record = dest.with_name(dest.name + ".sha256")
    with file_lock(dest.with_name(dest.name + ".lock"), error=CorpusError):
        if sha256_prefix is None and record.is_file():
            sha256_prefix = record.read_text().strip()
        if dest.is_file():
            got = sha256_file(dest)
            if sha256_prefix is None:  # placed by hand, no record yet: trust it from now on
                atomic_write(record, got + "\n")
                return dest
            if got.startswith(sha256_prefix):
                return dest
            log(f"{dest} fails its checksum; downloading it again")
        log(f"downloading {url} -> {dest}")
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a corpus is readable like any downloaded file
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        stream = gzip.GzipFile(fileobj=response) if gunzip else response
                        shutil.copyfileobj(stream, out, 1 << 20)
                except (urllib.error.URLError, OSError, EOFError) as exc:
                    raise CorpusError(f"cannot download {url}: {exc}; with no network, place the file at {dest} "
                                      f"(or set data.data_dir / HEADSWEEP_DATA to a folder that has it)") from exc
                out.flush()
                os.fsync(out.fileno())
            got = sha256_file(tmp)
            if sha256_prefix is None:
                atomic_write(record, got + "\n")
            elif not got.startswith(sha256_prefix):
                raise CorpusError(f"{url}: sha256 {got[:16]}… does not match the expected {sha256_prefix}…; "
                                  f"the upstream file changed or the download is corrupt")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


class _Downloaded(_FileBacked):
    """A known corpus in one language pair, kept in ``<data_dir>/<FOLDER>``."""

    KEY = ""  # the data.corpus value
    LANGS: tuple[str, str] = ("", "")
    FOLDER = ""
    NAME = ""

    def __init__(self, cfg: DataConfig, log: Callable[[str], None] = print) -> None:
        super().__init__()
        if {cfg.src_lang, cfg.tgt_lang} != set(self.LANGS):
            raise CorpusError(f"data.corpus {self.KEY} has languages {self.LANGS[0]} and {self.LANGS[1]}; got "
                              f"data.src_lang={cfg.src_lang!r}, data.tgt_lang={cfg.tgt_lang!r}")
        self.cfg, self.log = cfg, log
        self.name = f"{self.NAME}-{cfg.src_lang}-{cfg.tgt_lang}"
        self.folder = data_root(cfg) / self.FOLDER


class Multi30kCorpus(_Downloaded):
    """Multi30k task 1, English–German (Elliott et al. 2016): train 29,000, val 1,014, test_2016_flickr 1,000.

    Files are looked up in ``<data_dir>/multi30k/`` and downloaded there when missing.
    """

    UPSTREAM = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
    SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    # first 16 hex digits of the sha256 of each gunzipped file
    SHA256 = {
        "train.en": "460a15fbd157e34a", "train.de": "2c2b73fd2b548fbc",
        "val.en": "1f2a23d992769b5b", "val.de": "660e09eb7e1da2f8",
        "test_2016_flickr.en": "399a4382932c1aad", "test_2016_flickr.de": "4be6b5b3236b79c2",
    }

    KEY, LANGS, FOLDER, NAME = "multi30k", ("en", "de"), "multi30k", "multi30k"

    def paths(self, split: str) -> list[Path]:
        out = []
        for lang in (self.cfg.src_lang, self.cfg.tgt_lang):
            file = f"{self.SPLITS[split]}.{lang}"
            path = self.folder / file
            if path.is_file() and sha256_file(path).startswith(self.SHA256[file]):
                out.append(path)  # present and verified: nothing is written (the folder may be a shared copy)
                continue
            with contextlib.suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK):
                state = "fails its checksum" if path.is_file() else "is missing"
                raise CorpusError(f"{path} {state} and {self.folder} is not writable; set data.data_dir or "
                                  f"HEADSWEEP_DATA to a writable folder")
            base = (self.cfg.mirror or self.UPSTREAM).rstrip("/")
            fetch(f"{base}/{file}.gz", path, self.SHA256[file], gunzip=True, log=self.log)
            out.append(path)
        return out

    def _read(self, split: str, stats: Counter) -> tuple[list[str], list[str]]:
        return read_parallel(*self.paths(split), stats)


class WmtEnRuCorpus(_Downloaded):
    """The original study's setting: WMT news-commentary v14 en–ru for training (Voita et al. 2019), newstest2013
    for validation and newstest2014 for test, both fetched and verified by sacrebleu (``-t wmt13/wmt14 -l en-ru``).

    news-commentary publishes no checksum: the first download's sha256 is recorded and checked from then on.
    A few of its lines lack a field; they are skipped and counted (``skipped_fields``).
    """

    UPSTREAM = "https://data.statmt.org/news-commentary/v14/training"
    TRAIN_FILE = "news-commentary-v14.en-ru.tsv"
    TEST_SETS = {"valid": "wmt13", "test": "wmt14"}

    KEY, LANGS, FOLDER, NAME = "wmt_en_ru", ("en", "ru"), "wmt_en_ru", "wmt-nc14"

    def paths(self, split: str) -> list[Path]:
        if split == "train":
            dest = self.folder / self.TRAIN_FILE
            base = (self.cfg.mirror or self.UPSTREAM).rstrip("/")
            return [fetch(f"{base}/{self.TRAIN_FILE}.gz", dest, None, gunzip=True, log=self.log)]
        from sacrebleu.utils import get_reference_files, get_source_file

        test_set, pair = self.TEST_SETS[split], f"{self.cfg.src_lang}-{self.cfg.tgt_lang}"
        try:
            return [Path(get_source_file(test_set, pair)), Path(get_reference_files(test_set, pair)[0])]
        except Exception as exc:  # sacrebleu raises bare Exceptions for network and checksum failures
            raise CorpusError(f"sacrebleu could not provide {test_set} {pair}: {exc}") from exc

    def _read(self, split: str, stats: Counter) -> tuple[list[str], list[str]]:
        paths = self.paths(split)
        if split != "train":
            return read_parallel(*paths, stats)
        en, ru = read_tsv(paths[0], stats, strict=False)
        return (en, ru) if self.cfg.src_lang == "en" else (ru, en)


class HuggingFaceCorpus:
    """``data.corpus: hf`` with ``data.hf_name: NAME[/CONFIG]``: a Hugging Face ``datasets`` translation set
    (rows ``{"translation": {src_lang: ..., tgt_lang: ...}}``, e.g. ``wmt14/de-en``). The ``datasets`` package is
    imported only here, only when used; it is not a dependency of the project."""

    SPLITS = {"train": "train", "valid": "validation", "test": "test"}

    def __init__(self, cfg: DataConfig, log: Callable[[str], None] = print) -> None:
        if not cfg.hf_name:
            raise CorpusError("data.corpus hf needs data.hf_name (NAME or NAME/CONFIG)")
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise CorpusError("data.corpus hf needs the `datasets` package: pip install -e '.[hf]'") from exc
        self.cfg, self.log = cfg, log
        self.name = "hf-" + cfg.hf_name.replace("/", "-") + f"-{cfg.src_lang}-{cfg.tgt_lang}"
        self.stats: dict[str, Counter] = {}
        self._cache: dict[str, tuple[list[str], list[str]]] = {}

    def _load(self, split: str):
        import datasets

        name, _, config = self.cfg.hf_name.partition("/")
        return datasets.load_dataset(name, config or None, split=self.SPLITS[split])

    def fingerprint(self) -> str:
        rows = self._load("train")
        return f"{self.name}:{getattr(rows, '_fingerprint', None) or len(rows)}"

    def split(self, name: str) -> tuple[list[str], list[str]]:
        if name not in self._cache:
            src, tgt = [], []
            for n, row in enumerate(self._load(name)):
                pair = row.get("translation", row)
                if self.cfg.src_lang not in pair or self.cfg.tgt_lang not in pair:
                    raise CorpusError(f"{self.cfg.hf_name} {name} row {n}: no {self.cfg.src_lang!r}/"
                                      f"{self.cfg.tgt_lang!r} fields (has {sorted(pair)})")
                src.append(pair[self.cfg.src_lang])
                tgt.append(pair[self.cfg.tgt_lang])
            self._cache[name] = (src, tgt)
            self.stats[name] = Counter()
        return self._cache[name]


def describe_stats(stats: dict[str, Counter | dict]) -> str:
    """One line per split of non-zero counts, e.g. ``train: dropped_long=12 crlf=3``."""
    parts = []
    for split, counts in stats.items():
        nonzero = {k: v for k, v in counts.items() if v}
        if nonzero:
            parts.append(f"{split}: " + " ".join(f"{k}={v}" for k, v in sorted(nonzero.items())))
    return "; ".join(parts)


def stats_json(stats: dict[str, Counter | dict]) -> str:
    return json.dumps({split: dict(counts) for split, counts in stats.items()}, indent=2, sort_keys=True)
