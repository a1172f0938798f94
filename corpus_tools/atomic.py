"""Atomic file writes: the one way this project replaces a file.

A reader (another stage, a resumed run, a loader on another node) must never see half a
file, and a crash must leave the previous version intact. Every write therefore goes to a
temporary file in the same folder (same file system, so the rename is atomic), is flushed
and fsynced, and is then renamed over the target with ``os.replace``.

The temporary name is ``.{name}.{pid}.{random}.tmp``: hidden from globs such as ``*.tar*``
and ``*.parquet``, and unique per process and call, so two writers of the same target (Ray
workers, DDP ranks, a killed run's leftovers) never share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike, tag: str = "") -> Path:
    """A fresh temporary path beside ``path`` (see the module docstring for the pattern)."""
    path = Path(path)
    tag = f"{tag}." if tag else ""
    return path.with_name(f".{path.name}.{tag}{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder entry is; not every file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = 0o644, tag: str = "",
                tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    For writers that want a file name (``df.write_parquet(tmp)``). Not for ``torch.save(obj,
    tmp)``: torch records the file's name inside the archive, so the bytes would change with the
    random temporary name; save through a file object (:func:`atomic_open`) instead.
    On any exception the temporary file is removed and the exception propagates; ``path`` is
    untouched. ``mode`` is applied before the rename (``None`` keeps the writer's). ``tmp``
    replaces the default temporary name, for files whose temporary name must follow their own
    pattern (a shard's must not contain ``.tar``, and a resumed run must find it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, tag) if tmp is None else Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, mode: int | None = 0o644, tag: str = "",
                tmp: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file object; on success its bytes replace ``path`` atomically."""
    with atomic_path(path, mode=mode, tag=tag, tmp=tmp) as written, open(written, "wb") as fh:
        yield fh
        fh.flush()


def write_bytes(path: str | os.PathLike, data: bytes, **kw) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, **kw) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, **kw) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return write_bytes(path, text.encode("utf-8"), **kw)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None, **kw) -> Path:
    """Replace ``path`` with ``obj`` as JSON (UTF-8, a trailing newline) atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=default)
    return write_text(path, text + "\n", **kw)
