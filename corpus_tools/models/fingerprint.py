"""A cheap, content-sensitive fingerprint of a file or a folder of files (model weights).

Hashing every byte of a multi-GB checkpoint on every run costs seconds per model and per
worker, so each file contributes its size and a sample of its bytes: the first and the last
MiB and 16 blocks of 64 KiB spread evenly in between (files up to 3 MiB are read whole).
That catches a replaced model, a retrained or fine-tuned one, a truncated copy and every
change to a file's ends; torch's zip checkpoints keep a CRC of each tensor in their last
bytes, so for them any changed tensor shows. What it can miss is an edit confined to the
unsampled middle of a file that keeps its size.

A folder contributes every file below it (symbolic links followed), by path relative to
the folder, so the same files in another place have the same fingerprint, while a renamed,
added or removed file changes it. Names starting with "." (temporary and hidden files) and
``__pycache__`` are left out. Per-file digests are memoised in the process on (path, size,
mtime, ctime, inode), so a file rewritten in place is read again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EDGE = 1 << 20
BLOCK = 64 << 10
BLOCKS = 16
VERSION = "corpus-fingerprint-v1"

_DIGESTS: dict[tuple, str] = {}


def fingerprint(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` over the relative names, sizes and sampled bytes of ``path``'s files."""
    root = Path(path)
    h = hashlib.sha256(f"{VERSION}\n".encode())
    for rel, file in _files(root):
        st = file.stat()
        h.update(f"{rel}\0{st.st_size}\0{_file_digest(file, st)}\n".encode())
    return f"sha256:{h.hexdigest()}"


def _files(root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [("", root)]
    if not root.is_dir():
        raise FileNotFoundError(f"cannot fingerprint {root}: no such file or folder")
    out = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            if not name.startswith("."):
                p = Path(folder) / name
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _file_digest(path: Path, st: os.stat_result) -> str:
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = _sampled_sha256(path, st.st_size)
    return _DIGESTS[key]


def _sampled_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * EDGE + BLOCKS * BLOCK:
            h.update(fh.read())
        else:
            h.update(fh.read(EDGE))
            span = size - 2 * EDGE - BLOCK
            for i in range(BLOCKS):
                fh.seek(EDGE + span * i // (BLOCKS - 1))
                h.update(fh.read(BLOCK))
            fh.seek(size - EDGE)
            h.update(fh.read(EDGE))
    return h.hexdigest()
