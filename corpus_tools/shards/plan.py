"""The shard plan: which segment goes to which shard, under which key, with which json.

Deterministic and cheap (nothing is decoded): the plan depends only on the manifest rows, the
options and the seed, and its fingerprint (:func:`plan_fingerprint`) covers everything that
decides the shards' bytes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tarfile
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.manifests import SEGMENTS_SCHEMA, ManifestError, validate
from corpus_tools.shards.tar_writer import json_bytes
from corpus_tools.splits import canonical, select_segments
from corpus_tools.text import normalize_text

log = logging.getLogger(__name__)

STRATEGIES = ("length_sorted", "random")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")  # WebDataset keys end at the first dot


@dataclass
class ShardSpec:
    """One planned shard: its name and the utterances it holds (sorted by key)."""

    index: int
    name: str
    partial: bool
    items: list[dict] = field(default_factory=list)  # {key, path, start, num_frames, meta}

    @property
    def seconds(self) -> float:
        return float(sum(it["meta"]["duration"] for it in self.items))


def shard_name(prefix: str, index: int, partial: bool) -> str:
    return f"{prefix}.{index:06d}.partial.tar" if partial else f"{prefix}.{index:06d}.tar"


def safe_keys(segment_ids: list[str]) -> list[str]:
    """Tar keys for segment ids: dots and odd characters become ``_``, clashes get ``_N``."""
    seen: dict[str, int] = {}
    out = []
    for sid in segment_ids:
        k = _KEY_UNSAFE.sub("_", sid) or "_"
        if k in seen:
            seen[k] += 1
            k2 = f"{k}_{seen[k]}"
            while k2 in seen:
                seen[k] += 1
                k2 = f"{k}_{seen[k]}"
            k = k2
        seen.setdefault(k, 0)
        out.append(k)
    return out


def _clean(v):
    """A JSON-safe scalar (NaN → None), or None for nested values."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    return None


def letter_transcript(text: str, language: str | None) -> str:
    """The json's ``transcription``: ``text`` in the letter vocabulary (a–z, ', space)."""
    return normalize_text(text, language or "en")


def _sample_json(row: dict, key: str, num_frames: int, duration: float, extra: list[str]) -> dict:
    text = row.get("text") or ""
    meta = {
        "id": row["segment_id"],
        "sample_id": row["segment_id"],
        "key": key,
        "num_frames": num_frames,
        "sample_rate": SAMPLE_RATE,
        "duration": duration,
        "transcript": text,  # as the manifest has it
        "transcription": letter_transcript(text, row.get("language")),
        "speaker": row.get("speaker"),
        "speaker_id": row.get("speaker"),
        "recording": row.get("recording_id"),
        "recording_id": row.get("recording_id"),
        "session": row.get("session"),
        "language": row.get("language"),
        "language_tag": row.get("language"),
        "method": row.get("method"),
        "gender": _clean(row.get("gender")),
        "start": row.get("start"),
        "end": row.get("end"),
    }
    if row.get("split") is not None:  # top level, where the simulation and readers look
        meta["split"] = canonical(row["split"])
    ext = {c: _clean(row.get(c)) for c in extra if c not in meta and c != "split"}
    if ext:
        meta["extra"] = ext
    return meta


def _tar_member_bytes(size: int) -> int:
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _estimate_bytes(meta: dict, num_frames: int) -> int:
    """Tar bytes of one utterance as 16-bit PCM WAV (exact for wav; flac is smaller)."""
    jlen = len(json_bytes(meta))
    # names over 100 bytes get a PAX extended header (one header block + one data block)
    pax = 4 * tarfile.BLOCKSIZE if len(meta["key"]) + len(".flac") >= 100 else 0
    return _tar_member_bytes(jlen) + _tar_member_bytes(44 + 2 * num_frames) + pax


def prepare_segments(segments: pl.DataFrame) -> pl.DataFrame:
    """Validate a segments manifest and order it by segment id (input order never matters)."""
    df = validate(segments, SEGMENTS_SCHEMA, "segments")
    if df.height and df["segment_id"].null_count():
        raise ManifestError("segments manifest has rows without segment_id")
    dup = df.filter(pl.col("segment_id").is_duplicated())["segment_id"].unique().sort()
    if dup.len():
        raise ManifestError(f"duplicate segment_id in manifest: {', '.join(dup.head(5))}")
    missing = df.filter(pl.col("path").is_null() | pl.col("start").is_null()
                        | (pl.col("end").is_null() & pl.col("duration").is_null()))
    if missing.height:
        raise ManifestError(f"{missing.height} segments lack path/start/end, e.g. "
                            f"{missing['segment_id'][0]}")
    return (df.with_columns(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start"))
                            .alias("duration"))
            .sort("segment_id"))


def plan_shards(segments: pl.DataFrame, *, samples_per_shard: int = 5000,
                max_shard_bytes: int | None = None, strategy: str = "length_sorted",
                seed: int = 0, prefix: str = "shard", split: str = "train") -> list[ShardSpec]:
    """Decide which segment goes to which shard (deterministic; nothing is decoded).

    Only the rows of ``split`` (train | dev | test | all; null counts as train) are planned.

    ``length_sorted`` sorts by length (ties by key) and cuts consecutive blocks, so each
    shard is a length bin (little padding when batching, as nanow2v2); ``random``
    shuffles with ``seed``. A shard closes at ``samples_per_shard`` utterances or before it
    would pass ``max_shard_bytes`` (estimated on 16-bit PCM, so flac shards come out
    smaller). The last shard is ``.partial.tar`` unless it is exactly full.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be at least 1")
    df, _ = select_segments(prepare_segments(segments), split)
    extra = [c for c in df.columns if c not in SEGMENTS_SCHEMA]
    rows = df.to_dicts()
    keys = safe_keys([r["segment_id"] for r in rows])
    items = []
    for r, key in zip(rows, keys):
        duration = float(r["duration"])
        n = int(round(duration * SAMPLE_RATE))
        if n <= 0:
            log.warning("skipping empty segment %s", r["segment_id"])
            continue
        items.append({"key": key, "path": r["path"], "start": float(r["start"]),
                      "num_frames": n, "meta": _sample_json(r, key, n, duration, extra)})
    if strategy == "length_sorted":
        items.sort(key=lambda it: (it["num_frames"], it["key"]))
    else:
        perm = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in perm]

    groups: list[list[dict]] = []
    cur: list[dict] = []
    end_bytes = tarfile.RECORDSIZE  # end-of-archive blocks + padding to a whole record, at most
    cur_bytes = end_bytes
    for it in items:
        size = _estimate_bytes(it["meta"], it["num_frames"]) if max_shard_bytes else 0
        if cur and (len(cur) >= samples_per_shard
                    or (max_shard_bytes and cur_bytes + size > max_shard_bytes)):
            groups.append(cur)
            cur, cur_bytes = [], end_bytes
        cur.append(it)
        cur_bytes += size
    if cur:
        groups.append(cur)
    specs = []
    for i, g in enumerate(groups):
        partial = i == len(groups) - 1 and len(g) < samples_per_shard
        g.sort(key=lambda it: it["key"])
        specs.append(ShardSpec(i, shard_name(prefix, i, partial), partial, g))
    return specs


def plan_fingerprint(specs: list[ShardSpec], fmt: str) -> str:
    """A hash of everything that determines the shards' bytes."""
    h = hashlib.sha256(f"v1|{fmt}|{SAMPLE_RATE}\n".encode())
    for s in specs:
        h.update(f"#{s.name}\n".encode())
        for it in s.items:
            h.update(f"{it['path']}|{it['start']!r}|{it['num_frames']}|".encode())
            h.update(json_bytes(it["meta"]))
            h.update(b"\n")
    return h.hexdigest()


def legacy_fingerprint(specs: list[ShardSpec], fmt: str) -> str:
    """The fingerprint earlier versions gave this plan: their json held the manifest's text
    in ``transcription`` too."""
    def old(meta: dict) -> dict:
        return {**meta, "transcription": meta.get("transcript", "")}

    return plan_fingerprint([ShardSpec(s.index, s.name, s.partial,
                                       [{**it, "meta": old(it["meta"])} for it in s.items])
                             for s in specs], fmt)
