"""Writing one tar shard: fixed tar metadata, ``{key}.json`` then ``{key}.wav|flac`` per
utterance in key order, written atomically under a temporary name that no shard glob finds.

:class:`ShardTarWriter` writes a shard member by member (several can be open at once);
:func:`write_one_shard` writes one from an iterable of items through it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable

from corpus_tools.atomic import atomic_open
from corpus_tools.audio import SAMPLE_RATE

TAR_MTIME = 1672527600  # 2023-01-01, as nanow2v2
TAR_UNAME, TAR_GNAME = "research", "data"
TAR_MODE = 0o444


def shard_stem(name: str) -> str:
    """A shard's name without ``.tar`` (``shard.000001.partial``), for the files that belong
    to a shard but must not look like one to a ``*.tar*`` glob."""
    return name[:-4] if name.endswith(".tar") else name.replace(".tar", "_tar")


def temp_path(path: str | os.PathLike, tag: str = "") -> Path:
    """Where a shard is written before its rename: ``.shard.000001.tmp`` next to it (one name
    per shard, so a rerun finds and removes what a killed writer left)."""
    path = Path(path)
    return path.with_name(f".{shard_stem(path.name)}{tag}.tmp")


def json_bytes(meta: dict) -> bytes:
    """An utterance's json member (sorted keys, UTF-8)."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


class _HashingFile:
    """A write-only file that keeps a running sha256 and byte count."""

    def __init__(self, fh):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.fh.flush()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = TAR_MTIME
    ti.mode = TAR_MODE
    ti.uid = ti.gid = 0
    ti.uname, ti.gname = TAR_UNAME, TAR_GNAME
    ti.type = tarfile.REGTYPE
    return ti


def _audio_ext(data: bytes) -> str:
    if data[:4] == b"RIFF":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    raise ValueError("audio bytes are neither WAV (RIFF) nor FLAC")


class ShardTarWriter:
    """One tar shard written member by member, atomically: :meth:`add` utterances in key
    order, then :meth:`close` (fsync and rename; returns the shard's stats) or :meth:`abort`.

    Members are ``{key}.json`` then ``{key}.wav``/``.flac`` (from the audio's magic bytes).
    Keys must not contain dots (WebDataset splits the key at the first dot) and must
    increase. The shard is written to ``temp_path(path)`` (``.shard.000001.tmp``: no ``.tar``
    in it, so no shard glob finds a half-written file); until :meth:`close` the final name
    is untouched. Used as a context manager, an exception aborts and a normal exit closes.
    Each writer holds one open file, so a process can fill many shards at once (the shard
    writer fills a group of shards from one decode of each recording).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files = contextlib.ExitStack()
        raw = self._files.enter_context(atomic_open(self.path, tmp=temp_path(self.path)))
        self._out = _HashingFile(raw)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT)
        self._last: str | None = None
        self._count = self._frames = 0
        self._seconds = 0.0
        self._min_d, self._max_d = float("inf"), float("-inf")
        self._open = True
        self.stats: dict | None = None  # set by close()

    def add(self, key: str, audio: bytes, meta: dict) -> None:
        """Append one utterance: its json member, then its audio member."""
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"shard key {key!r} contains a dot")
        if self._last is not None and key <= self._last:
            raise ValueError(f"shard items not sorted/unique by key at {key!r}")
        self._last = key
        jb = json_bytes(meta)
        self._tar.addfile(_tarinfo(f"{key}.json", len(jb)), io.BytesIO(jb))
        self._tar.addfile(_tarinfo(f"{key}.{_audio_ext(audio)}", len(audio)), io.BytesIO(audio))
        n = int(meta.get("num_frames") or 0)
        d = float(meta.get("duration", n / SAMPLE_RATE))
        self._count += 1
        self._frames += n
        self._seconds += d
        self._min_d, self._max_d = min(self._min_d, d), max(self._max_d, d)

    def close(self) -> dict:
        """Finish the tar (end-of-archive blocks), fsync it and rename it to its final name.
        Returns ``{name, count, bytes, sha256, num_frames, min_duration, max_duration,
        seconds}`` (also kept as ``stats``); a second call returns the same."""
        if self._open:
            try:
                self._tar.close()  # the end-of-archive blocks; the file itself stays open
            except BaseException:
                self.abort()
                raise
            self._open = False
            self._files.close()  # fsync + rename; on failure atomic_open removes the temp file
            self.stats = {"name": self.path.name, "count": self._count, "bytes": self._out.size,
                          "sha256": self._out.sha.hexdigest(), "num_frames": self._frames,
                          "seconds": self._seconds,
                          "min_duration": self._min_d if self._count else 0.0,
                          "max_duration": self._max_d if self._count else 0.0}
        return self.stats

    def abort(self) -> None:
        """Drop the temporary file; the final name keeps whatever it held before."""
        if self._open:
            self._open = False
            err = RuntimeError(f"writing {self.path.name} aborted")
            self._files.__exit__(type(err), err, None)  # atomic_open removes the temp file

    def __enter__(self) -> "ShardTarWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_one_shard(path: str | os.PathLike, items: Iterable[tuple[str, bytes, dict]], *,
                    presorted: bool = False) -> dict:
    """Write one tar shard atomically from ``(key, audio_bytes, json_dict)`` items.

    Members are ``{key}.json`` then ``{key}.wav``/``.flac`` (from the audio's magic bytes),
    in key order: ``presorted=False`` collects and sorts the items first; ``presorted=True``
    streams them (constant memory) and raises if they are out of order. Keys must not
    contain dots (WebDataset splits the key at the first dot). The shard is written to
    ``temp_path(path)`` (``.shard.000001.tmp``: no ``.tar`` in it, so no shard glob finds a
    half-written file), fsynced and renamed (:class:`ShardTarWriter`). Returns ``{name,
    count, bytes, sha256, num_frames, min_duration, max_duration, seconds}``.
    """
    if not presorted:
        items = sorted(items, key=lambda t: t[0])
    with ShardTarWriter(path) as shard:
        for key, audio, meta in items:
            shard.add(key, audio, meta)
    return shard.stats
