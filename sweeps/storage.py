"""The results storage: a local folder (or one on a shared filesystem such as NFS) or a URI (``s3://bucket/prefix``,
``gs://...``), reached through pyarrow's filesystems, the ones Ray Tune itself uses. No Ray here.

An S3-compatible server other than AWS (MinIO, Ceph, ...) is named the way every AWS SDK reads it:
``AWS_ENDPOINT_URL=http://host:9000`` (with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), on the driver and on
every node; a URI carries no query string (``?endpoint_override=...``), so that the paths joined onto it stay valid.

What is read back from a URI (``analysis``, a resumed sweep's Optuna study) is copied into a local mirror,
``$HEADSWEEP_CACHE/storage/<scheme>/<bucket>/<key>`` (default ``~/.cache/headsweep``), and read there; what is
written to it (the trials table, the report) is written locally and uploaded.

Storage that goes away for a while (an S3 server restarted, a network partition) is waited out rather than failed
on: every filesystem of a URI that this module hands out, the ones Ray gets for the sweep included, retries each
request for up to ``HEADSWEEP_STORAGE_RETRY_S`` seconds (default 600; 0 fails at once), on the driver and in every
trial. pyarrow's own S3 filesystem loses its retry settings when pickled, which is how Ray sends it to the trials;
:class:`PatientS3FileSystem` keeps them.
"""

from __future__ import annotations

import datetime
import functools
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs

from model.files import atomic_write, cache_root

RETRY_ENV = "HEADSWEEP_STORAGE_RETRY_S"
DEFAULT_PATIENCE_S = 600.0
FIRST_RETRY_S = 0.025  # the AWS SDK's default retry strategy: 25 ms before the first retry, doubling each time


class StorageError(OSError):
    """A path or URI of the results storage that cannot be used, with what is allowed."""


def is_uri(target: str | os.PathLike) -> bool:
    return "://" in str(target)


def join_storage(root: str, *parts: str) -> str:
    """A path in the results storage: a local folder or a URI (s3://bucket/prefix)."""
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))


def check_uri(uri: str) -> str:
    """A storage URI as the project uses it: ``scheme://bucket[/prefix]`` without a query string."""
    scheme, _, rest = uri.partition("://")
    if "?" in uri:
        raise StorageError(f"{uri}: a results URI takes no query string; name an S3-compatible server with "
                           f"AWS_ENDPOINT_URL=http://host:port (its keys: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if not scheme or not rest.strip("/"):
        raise StorageError(f"{uri}: expected scheme://bucket[/prefix], e.g. s3://my-bucket/headsweep")
    return uri.rstrip("/")


def storage_patience() -> float:
    """How long a request to the storage is retried before it fails: ``$HEADSWEEP_STORAGE_RETRY_S`` seconds."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_PATIENCE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise StorageError(f"{RETRY_ENV}={raw!r}: expected the seconds a storage request is retried for, a number "
                           f">= 0 (default {DEFAULT_PATIENCE_S:g}; 0 fails at the first error)")
    return value


def s3_retries(patience: float) -> int:
    """The fewest retries whose doubling delays (25 ms, 50 ms, ...) add up to ``patience`` seconds: an outage of
    up to ``patience`` is waited out, and the wait after the storage is back is at most about as long as the
    outage had lasted."""
    retries = 0
    while FIRST_RETRY_S * (2 ** retries - 1) < patience:
        retries += 1
    return retries


class PatientS3FileSystem(pyarrow.fs.S3FileSystem):
    """pyarrow's S3 filesystem that retries a failed request (a refused connection, a timeout, a 5xx) for up to
    ``patience`` seconds, and keeps doing so after pickling: Ray pickles the storage filesystem to every trial."""

    def __init__(self, patience: float, **options: Any) -> None:
        retries = pyarrow.fs.AwsDefaultS3RetryStrategy(max_attempts=s3_retries(patience))
        super().__init__(retry_strategy=retries, **options)
        self.patience = patience
        self._options = options

    def __reduce__(self):
        return PatientS3FileSystem._rebuild, (self.patience, self._options)

    @staticmethod
    def _rebuild(patience: float, options: dict[str, Any]) -> "PatientS3FileSystem":
        return PatientS3FileSystem(patience, **options)


def patient(fs: Any, patience: float | None = None) -> Any:
    """``fs`` retrying its requests for ``patience`` seconds (default: :func:`storage_patience`): S3 through
    :class:`PatientS3FileSystem`, GCS through its own ``retry_time_limit``; other filesystems as they are."""
    patience = storage_patience() if patience is None else patience
    if fs.type_name not in ("s3", "gcs"):
        return fs
    options = dict(fs.__reduce__()[1][0])  # the options pyarrow itself pickles the filesystem with
    if fs.type_name == "s3":
        return PatientS3FileSystem(patience, **options)
    options["retry_time_limit"] = datetime.timedelta(seconds=patience)
    return pyarrow.fs.GcsFileSystem(**options)


@functools.lru_cache(maxsize=32)
def _bucket_filesystem(root: str, patience: float, environment: tuple[tuple[str, str], ...]) -> Any:
    """One filesystem per bucket, patience and storage settings in the environment: opening one can itself need
    the network (S3 looks up the bucket's region), so it is done once, not for every file."""
    fs, _ = pyarrow.fs.FileSystem.from_uri(root)
    return patient(fs, patience)


def filesystem(target: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI; a URI's filesystem waits out outages of
    the storage (:func:`storage_patience`)."""
    if not is_uri(target):
        return pyarrow.fs.LocalFileSystem(), str(Path(target).resolve())
    scheme, _, rest = target.partition("://")
    bucket = rest.strip("/").split("/", 1)[0]
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_"))))
    try:
        fs = _bucket_filesystem(f"{scheme}://{bucket}", storage_patience(), settings)
        if fs.type_name in ("s3", "gcs"):
            return fs, rest.strip("/")
        return pyarrow.fs.FileSystem.from_uri(target)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"{target}: cannot open this storage ({exc})") from exc


def ray_storage(target: str) -> tuple[str, Any]:
    """What Ray Tune gets for a storage path (``storage_path``, ``storage_filesystem``): a local path and None, or
    a URI's path inside its bucket and its patient filesystem."""
    if not is_uri(target):
        return target, None
    fs, path = filesystem(target)
    return path, fs


def uri_of(fs: Any, path: str) -> str:
    """The full name of ``path`` in a pyarrow filesystem (as Ray's results give them): a local path stays a path,
    an S3 one gets its ``s3://`` back (Ray's ``Result.path`` is ``bucket/key``)."""
    if fs is None or fs.type_name == "local":
        return path
    return f"{fs.type_name}://{path.lstrip('/')}"


def exists(target: str) -> bool:
    fs, path = filesystem(target)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(target: str, text: str) -> None:
    """Write a file in the storage: atomically on a local disk, through pyarrow for a URI (one PUT: readers see the
    old object or the new one)."""
    if is_uri(target):
        fs, path = filesystem(target)
        with fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))
        return
    atomic_write(target, text)


def read_bytes(target: str) -> bytes:
    fs, path = filesystem(target)
    with fs.open_input_stream(path) as f:
        return f.readall()


def mirror_path(uri: str) -> Path:
    """Where a URI's copy lies on this machine."""
    scheme, _, rest = uri.partition("://")
    return cache_root() / "storage" / scheme / rest.strip("/")


def folder_names(target: str) -> list[str]:
    """The names of the folders directly in ``target`` (a local folder or a URI); none where it does not exist."""
    fs, path = filesystem(target)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return []
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in found if i.type == pyarrow.fs.FileType.Directory)


def _files(fs: Any, path: str) -> list[Any]:
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.File:
        return [info]
    if info.type == pyarrow.fs.FileType.NotFound:
        return []
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return [i for i in found if i.type == pyarrow.fs.FileType.File]


def download(uri: str, local: str | os.PathLike | None = None, skip: Iterable[str] = (),
             recursive: bool = True, refresh: bool = False) -> Path:
    """Copy a file or folder of the storage to ``local`` (default: its mirror) and return the local path. Files
    already there with the same size are kept unless ``refresh`` (right for files written once, such as a
    checkpoint's; not for a table that is rewritten); names ending in one of ``skip`` (e.g. ``.pt``) are left out;
    ``recursive=False`` copies a folder's own files only. A file is written through a temporary name and a rename."""
    fs, path = filesystem(uri)
    target = Path(local) if local is not None else mirror_path(uri)
    found = _files(fs, path)
    if not found:
        raise StorageError(f"{uri}: not found in the storage")
    skip = tuple(skip)
    for info in found:
        rel = os.path.relpath(info.path, path) if info.path != path else ""
        if (not recursive and "/" in rel) or (skip and info.path.endswith(skip)):
            continue
        dest = target / rel if rel else target
        if not refresh and dest.exists() and dest.stat().st_size == info.size:
            continue
        with fs.open_input_stream(info.path) as f:
            atomic_write(dest, f.readall())
    return target


def upload(local: str | os.PathLike, uri: str) -> None:
    """Copy a local file or folder to a URI of the storage (a folder's tree under it)."""
    local = Path(local)
    fs, path = filesystem(uri)
    if local.is_file():
        pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)
        return
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        pyarrow.fs.copy_files(str(file), f"{path}/{file.relative_to(local).as_posix()}",
                              source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)


def local_copy(target: str | os.PathLike, skip: Iterable[str] = (), refresh: bool = False) -> Path:
    """A local path holding ``target``: itself when local, else its downloaded mirror."""
    return download(str(target), skip=skip, refresh=refresh) if is_uri(target) else Path(target)


def snapshot_sqlite(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A consistent copy of a SQLite database (SQLite's backup API, safe while it is written), placed atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        src, dst = sqlite3.connect(str(source)), sqlite3.connect(tmp)
        try:
            with dst:
                src.backup(dst)
        finally:
            src.close()
            dst.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
