"""The results storage: a local folder (or one on a shared filesystem such as NFS) or a URI (``s3://bucket/prefix``,
``gs://...``), reached through pyarrow's filesystems, the ones Ray Tune itself uses. No Ray here.

An S3-compatible server other than AWS (MinIO, Ceph, ...) is named the way every AWS SDK reads it:
``AWS_ENDPOINT_URL=http://host:9000`` (with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), on the driver and on
every node; a URI carries no query string (``?endpoint_override=...``), so that the paths joined onto it stay valid.

What is read back from a URI (``analysis``, a resumed sweep's Optuna study) is copied into a local mirror,
``$HEADSWEEP_CACHE/storage/<scheme>/<bucket>/<key>`` (default ``~/.cache/headsweep``), and read there; what is
written to it (the trials table, the report) is written locally and uploaded.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from model.files import atomic_write


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


def filesystem(target: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    import pyarrow.fs

    if not is_uri(target):
        return pyarrow.fs.LocalFileSystem(), str(Path(target).resolve())
    try:
        return pyarrow.fs.FileSystem.from_uri(target)
    except Exception as exc:
        raise StorageError(f"{target}: cannot open this storage ({exc})") from exc


def uri_of(fs: Any, path: str) -> str:
    """The full name of ``path`` in a pyarrow filesystem (as Ray's results give them): a local path stays a path,
    an S3 one gets its ``s3://`` back (Ray's ``Result.path`` is ``bucket/key``)."""
    if fs is None or fs.type_name == "local":
        return path
    return f"{fs.type_name}://{path.lstrip('/')}"


def exists(target: str) -> bool:
    import pyarrow.fs

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


def cache_root() -> Path:
    return Path(os.environ.get("HEADSWEEP_CACHE") or Path.home() / ".cache" / "headsweep")


def mirror_path(uri: str) -> Path:
    """Where a URI's copy lies on this machine."""
    scheme, _, rest = uri.partition("://")
    return cache_root() / "storage" / scheme / rest.strip("/")


def _files(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs

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
    import pyarrow.fs

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
