"""Writing one tar shard: fixed tar metadata, ``{key}.json`` then ``{key}.wav|flac`` per
utterance in key order, written atomically under a temporary name that no shard glob finds."""

from __future__ import annotations

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


def write_one_shard(path: str | os.PathLike, items: Iterable[tuple[str, bytes, dict]], *,
                    presorted: bool = False) -> dict:
    """Write one tar shard atomically from ``(key, audio_bytes, json_dict)`` items.

    Members are ``{key}.json`` then ``{key}.wav``/``.flac`` (from the audio's magic bytes),
    in key order: ``presorted=False`` collects and sorts the items first; ``presorted=True``
    streams them (constant memory) and raises if they are out of order. Keys must not
    contain dots (WebDataset splits the key at the first dot). The shard is written to
    ``temp_path(path)`` (``.shard.000001.tmp``: no ``.tar`` in it, so no shard glob finds a
    half-written file), fsynced and renamed. Returns ``{name, count, bytes, sha256,
    num_frames, min_duration, max_duration, seconds}``.
    """
    path = Path(path)
    if not presorted:
        items = sorted(items, key=lambda t: t[0])
    count = frames = 0
    seconds = 0.0
    durs: list[float] = []
    last = None
    with atomic_open(path, tmp=temp_path(path)) as raw:
        out = _HashingFile(raw)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for key, audio, meta in items:
                if "." in key.rsplit("/", 1)[-1]:
                    raise ValueError(f"shard key {key!r} contains a dot")
                if last is not None and key <= last:
                    raise ValueError(f"shard items not sorted/unique by key at {key!r}")
                last = key
                jb = json_bytes(meta)
                tf.addfile(_tarinfo(f"{key}.json", len(jb)), io.BytesIO(jb))
                tf.addfile(_tarinfo(f"{key}.{_audio_ext(audio)}", len(audio)), io.BytesIO(audio))
                count += 1
                n = int(meta.get("num_frames") or 0)
                frames += n
                d = float(meta.get("duration", n / SAMPLE_RATE))
                seconds += d
                durs.append(d)
    return {"name": path.name, "count": count, "bytes": out.size, "sha256": out.sha.hexdigest(),
            "num_frames": frames, "seconds": seconds,
            "min_duration": min(durs) if durs else 0.0, "max_duration": max(durs) if durs else 0.0}
