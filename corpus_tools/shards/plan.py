"""The shard plan: which segment goes to which shard, under which key, with which json.

Deterministic and cheap (nothing is decoded): the plan depends only on the manifest rows, the
options and the seed, and its fingerprint (:func:`plan_fingerprint`) covers everything that
decides the shards' bytes.

The plan is compact, for corpora of millions of segments: the manifest's columns, each row's
key and frame count, and arrays of row numbers (the order, the shard boundaries) are all it
holds; a shard's item dicts and json are made when its ``items`` are read (the writer reads
them shard by shard). Sorting, keys and frame counts are vectorised (polars, numpy) and give
what the earlier dict-per-item planner gave (``tests/test_shard_plan.py``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tarfile

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


class ShardSpec:
    """One planned shard: its name and the utterances it holds (sorted by key).

    ``items`` are ``{key, path, start, num_frames, meta}`` dicts. A spec made by
    :func:`plan_shards` keeps its rows in the plan's compact table (:class:`PlanRows`, shared
    by every spec of the plan) and makes the dicts when ``items`` is first read; a pass over
    the whole plan that should not keep them (the fingerprint) reads :meth:`iter_items`.
    """

    def __init__(self, index: int, name: str, partial: bool, items: list[dict] | None = None, *,
                 rows: "PlanRows | None" = None, span: tuple[int, int] = (0, 0)):
        self.index, self.name, self.partial = index, name, partial
        self._items = items if items is not None or rows is not None else []
        self._rows, self._span = rows, span

    @property
    def items(self) -> list[dict]:
        if self._items is None:
            self._items = list(self.iter_items())
        return self._items

    def iter_items(self):
        """The items, made one at a time when they are not kept already."""
        if self._items is not None:
            yield from self._items
        else:
            yield from self._rows.items(*self._span)

    @property
    def count(self) -> int:
        """How many utterances (without making the items)."""
        return len(self._items) if self._items is not None else self._span[1] - self._span[0]

    @property
    def seconds(self) -> float:
        if self._items is not None:
            return float(sum(it["meta"]["duration"] for it in self._items))
        return float(sum(self._rows.durations(*self._span)))  # the same floats, added in the same order

    def __getstate__(self) -> dict:
        # a worker process gets its own rows, not the whole plan's table
        rows = self._rows.subset(*self._span) if self._items is None else None
        return {"index": self.index, "name": self.name, "partial": self.partial, "_items": self._items,
                "_rows": rows, "_span": (0, rows.count) if rows is not None else (0, 0)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __eq__(self, other) -> bool:
        return (isinstance(other, ShardSpec) and (self.index, self.name, self.partial) ==
                (other.index, other.name, other.partial) and self.items == other.items)

    def __repr__(self) -> str:
        return f"ShardSpec(index={self.index}, name={self.name!r}, partial={self.partial}, count={self.count})"


class PlanRows:
    """The rows of a plan, compact: the manifest's table (Arrow columns) with each row's key
    and frame count, and the plan's order of its rows. Items are made from it on demand."""

    KEY, FRAMES = "__plan_key", "__plan_frames"

    def __init__(self, table: pl.DataFrame, order: np.ndarray, extra: list[str]):
        self.table, self.order, self.extra = table, order, extra

    @property
    def count(self) -> int:
        return len(self.order)

    def durations(self, start: int, stop: int) -> list[float]:
        return self.table["duration"].gather(self.order[start:stop]).to_list()

    def subset(self, start: int, stop: int) -> "PlanRows":
        return PlanRows(self.table[self.order[start:stop]], np.arange(stop - start), self.extra)

    def items(self, start: int, stop: int, chunk: int = 1000):
        """The items of rows ``start:stop`` of the order, made ``chunk`` rows at a time."""
        for lo in range(start, stop, chunk):
            for r in self.table[self.order[lo:min(stop, lo + chunk)]].iter_rows(named=True):
                key, n = r[self.KEY], r[self.FRAMES]
                duration = float(r["duration"])
                yield {"key": key, "path": r["path"], "start": float(r["start"]), "num_frames": n,
                       "meta": _sample_json(r, key, n, duration, self.extra)}


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


def _key_series(segment_ids: pl.Series, by_id: np.ndarray) -> pl.Series:
    """:func:`safe_keys` of a column (``by_id``: its rows in segment id order): one regex
    pass, and the exact loop only when two ids give the same key (then the ``_N`` suffixes
    follow the id order)."""
    base = segment_ids.str.replace_all(_KEY_UNSAFE.pattern, "_").replace("", "_")
    if base.is_unique().all():
        return base
    exact = pl.Series(safe_keys(segment_ids.gather(by_id).to_list()), dtype=pl.String)
    return exact.gather(np.argsort(by_id))


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
    return _checked_segments(segments).sort("segment_id")


def _checked_segments(segments: pl.DataFrame) -> pl.DataFrame:
    """:func:`prepare_segments` in the input's order (the plan orders row numbers instead of
    copying the table)."""
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
    return df.with_columns(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start")).alias("duration"))


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
    df, _ = select_segments(_checked_segments(segments), split)
    extra = [c for c in df.columns if c not in SEGMENTS_SCHEMA]
    by_id = df["segment_id"].arg_sort().to_numpy()  # the rows in segment id order: no copy of them
    frames = _frame_counts(df)
    table = df.with_columns(_key_series(df["segment_id"], by_id).alias(PlanRows.KEY),
                            pl.Series(PlanRows.FRAMES, frames, dtype=pl.Int64))
    key_rank = table[PlanRows.KEY].rank("ordinal").to_numpy()  # keys are unique: their order, as numbers
    for i in by_id[frames[by_id] <= 0]:
        log.warning("skipping empty segment %s", df["segment_id"][int(i)])
    kept = by_id[frames[by_id] > 0]
    if strategy == "length_sorted":  # by length, ties by key (keys are unique)
        order = kept[np.lexsort((key_rank[kept], frames[kept]))]
    else:
        order = kept[np.random.default_rng(seed).permutation(len(kept))]
    rows = PlanRows(table, order, extra)
    bounds = _shard_bounds(rows, samples_per_shard, max_shard_bytes)
    rows.order = _key_order_within(rows.order, bounds, key_rank)
    specs = []
    for i, (lo, hi) in enumerate(bounds):
        partial = i == len(bounds) - 1 and hi - lo < samples_per_shard
        specs.append(ShardSpec(i, shard_name(prefix, i, partial), partial, rows=rows, span=(lo, hi)))
    return specs


def _frame_counts(df: pl.DataFrame) -> np.ndarray:
    """``int(round(duration * SAMPLE_RATE))`` of every row (numpy rounds half to even, as
    Python's ``round`` does), with Python's errors for NaN and infinite durations."""
    x = df["duration"].cast(pl.Float64).to_numpy() * SAMPLE_RATE
    if np.isnan(x).any():
        raise ValueError("cannot convert float NaN to integer")
    if np.isinf(x).any():
        raise OverflowError("cannot convert float infinity to integer")
    return np.rint(x).astype(np.int64)


def _shard_bounds(rows: PlanRows, samples_per_shard: int, max_shard_bytes: int | None) -> list[tuple[int, int]]:
    """Cut the plan's order into shards: ``(start, stop)`` of each. A shard closes at
    ``samples_per_shard`` utterances or before its estimated bytes pass ``max_shard_bytes``."""
    n = rows.count
    if not max_shard_bytes:
        return [(lo, min(n, lo + samples_per_shard)) for lo in range(0, n, samples_per_shard)]
    bounds, lo, count = [], 0, 0
    end_bytes = tarfile.RECORDSIZE  # end-of-archive blocks + padding to a whole record, at most
    cur_bytes = end_bytes
    for i, it in enumerate(rows.items(0, n)):  # the json's length decides: made, measured, dropped
        size = _estimate_bytes(it["meta"], it["num_frames"])
        if count and (count >= samples_per_shard or cur_bytes + size > max_shard_bytes):
            bounds.append((lo, i))
            lo, count, cur_bytes = i, 0, end_bytes
        count += 1
        cur_bytes += size
    if count:
        bounds.append((lo, n))
    return bounds


def _key_order_within(order: np.ndarray, bounds: list[tuple[int, int]], key_rank: np.ndarray) -> np.ndarray:
    """The plan's order with each shard's rows sorted by key (a shard's member order)."""
    shard = np.zeros(len(order), dtype=np.int64)
    for i, (lo, hi) in enumerate(bounds):
        shard[lo:hi] = i
    return order[np.lexsort((key_rank[order], shard))]


def plan_fingerprint(specs: list[ShardSpec], fmt: str) -> str:
    """A hash of everything that determines the shards' bytes."""
    h = hashlib.sha256(f"v1|{fmt}|{SAMPLE_RATE}\n".encode())
    for s in specs:
        h.update(f"#{s.name}\n".encode())
        for it in s.iter_items():  # made and dropped: the plan stays compact
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
                                       [{**it, "meta": old(it["meta"])} for it in s.iter_items()])
                             for s in specs], fmt)
