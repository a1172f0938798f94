"""Train / dev / test splits: which rows training shards are written from, and held-out splits.

Importers write a ``split`` column (``train`` | ``dev`` | ``test``; null when the corpus has no
split, e.g. curated broadcast segments or MUSAN noise). Null counts as training data. Shard
writers (``corpus shard``, ``corpus simulate``) keep only the rows of the split they are asked
for — ``train`` unless told otherwise — through :func:`select`, and the simulation never
degrades a dev or test utterance (:func:`is_held_out`).

:func:`mark_holdout` makes the thesis' validation split for corpora that have none: it marks
a few utterances of each session (the median-length one by default) as ``dev``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np
import polars as pl

from corpus_tools.manifests import read_segments, write_segments

SPLITS = ("train", "dev", "test")
CHOICES = (*SPLITS, "all")
PICKS = ("median", "random")
# Names corpora and older manifests use for their held-out parts. "validated" (Common Voice's
# list of reviewed clips, mostly training data) is deliberately not among them.
_DEV = re.compile(r"^(dev|val|valid|validation|development)([-_.].*)?$")
_TEST = re.compile(r"^(test|eval|evaluation)([-_.].*)?$")

T = TypeVar("T")


def canonical(value) -> str:
    """``train`` | ``dev`` | ``test`` for a split value: dev-clean → dev, eval → test, null → train.

    Anything that does not name a dev or test split is training data.
    """
    if not isinstance(value, str):
        return "train"
    v = value.strip().lower()
    if _DEV.match(v):
        return "dev"
    if _TEST.match(v):
        return "test"
    return "train"


def split_of(meta: Mapping | None) -> str:
    """The canonical split of a manifest row or a shard json (``split``, else ``extra.split``)."""
    meta = meta or {}
    value = meta.get("split")
    if value is None and isinstance(meta.get("extra"), Mapping):  # older `corpus shard` json
        value = meta["extra"].get("split")
    return canonical(value)


def is_held_out(meta: Mapping | None) -> bool:
    """True for dev and test data: never degraded, never a partner, never in training shards."""
    return split_of(meta) != "train"


def check_choice(which: str) -> str:
    if which not in CHOICES:
        raise ValueError(f"unknown split {which!r}: use one of {', '.join(CHOICES)}")
    return which


@dataclass
class LeftOut:
    """What a split selection left out, per split: utterances and seconds."""

    which: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.counts.values())

    @property
    def utterances(self) -> int:
        return sum(self.counts.values())

    def message(self) -> str:
        """One line: what was left out and how to include it."""
        present = [s for s in SPLITS if self.counts.get(s)]
        parts = " and ".join(f"{self.counts[s]} {s}" for s in present)
        hours = sum(self.seconds.values()) / 3600
        options = ", ".join(f"--split {s}" for s in present)
        return (f"left out {parts} utterances ({hours:.2f} h) that are not {self.which} data; "
                f"pass --split all (or {options}) to include them")


def select(rows: Sequence[T], which: str, *, meta: Callable[[T], Mapping] = lambda r: r,
           seconds: Callable[[T], float] | None = None) -> tuple[list[T], LeftOut]:
    """The rows of split ``which`` (train | dev | test | all) and a count of the rest.

    ``meta(row)`` gives what :func:`split_of` reads (a manifest row dict, a shard json);
    ``seconds(row)`` its duration for the report.
    """
    check_choice(which)
    kept, left = [], LeftOut(which)
    for r in rows:
        s = split_of(meta(r))
        if which == "all" or s == which:
            kept.append(r)
            continue
        left.counts[s] = left.counts.get(s, 0) + 1
        if seconds is not None:
            left.seconds[s] = left.seconds.get(s, 0.0) + float(seconds(r) or 0.0)
    return kept, left


def select_segments(df: pl.DataFrame, which: str) -> tuple[pl.DataFrame, LeftOut]:
    """:func:`select` on a segments manifest. A manifest without a ``split`` column is all
    training data and comes back unchanged (the same object)."""
    check_choice(which)
    if "split" not in df.columns:
        return (df, LeftOut(which)) if which in ("train", "all") else (df.clear(), _all_train(df, which))
    values = df["split"].to_list()
    duration = _durations(df)
    idx, left = select(range(df.height), which, meta=lambda i: {"split": values[i]},
                       seconds=lambda i: duration[i])
    if len(idx) == df.height:
        return df, left
    return df[idx], left


def _durations(df: pl.DataFrame) -> list[float]:
    if "duration" in df.columns:
        d = df["duration"]
        if "end" in df.columns and "start" in df.columns:
            d = d.fill_null(df["end"] - df["start"])
        return [float(x or 0.0) for x in d.to_list()]
    return [0.0] * df.height


def _all_train(df: pl.DataFrame, which: str) -> LeftOut:
    return LeftOut(which, {"train": df.height}, {"train": float(sum(_durations(df)))})


# -- a held-out split for corpora without one -----------------------------------------------


def _session_keys(df: pl.DataFrame) -> list[str | None]:
    """The session of each row; a row without one uses its recording."""
    sessions = df["session"].to_list() if "session" in df.columns else [None] * df.height
    recordings = df["recording_id"].to_list() if "recording_id" in df.columns else [None] * df.height
    return [None if (s if s is not None else r) is None else str(s if s is not None else r)
            for s, r in zip(sessions, recordings)]


def _seed_for(seed: int, session: str) -> list[int]:
    digest = hashlib.sha256(session.encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def mark_holdout(df: pl.DataFrame, *, per_session: int = 1, pick: str = "median",
                 seed: int = 0) -> pl.DataFrame:
    """Mark ``per_session`` training utterances of each session as ``split = dev``.

    Only rows whose split is null or train take part; dev and test rows stay as they are.
    ``median`` takes the utterances around the session's median length (sorted by duration,
    then segment id; the lower median for an even count); ``random`` draws them with a
    generator seeded by ``seed`` and the session name, so the result depends neither on row
    order nor on the other sessions. A session keeps at least one utterance for training: one
    with ``m <= per_session`` utterances gives ``m - 1`` (a single-utterance session gives
    none). Rows without session and recording are never held out. Other rows and columns are
    returned unchanged, in the same order.
    """
    if per_session < 1:
        raise ValueError("per_session must be at least 1")
    if pick not in PICKS:
        raise ValueError(f"unknown pick {pick!r}: use one of {', '.join(PICKS)}")
    if "segment_id" not in df.columns:
        raise ValueError("the manifest has no segment_id column")
    splits = df["split"].to_list() if "split" in df.columns else [None] * df.height
    ids = [str(x) for x in df["segment_id"].to_list()]
    durations = _durations(df)
    by_session: dict[str, list[int]] = {}
    for i, (session, value) in enumerate(zip(_session_keys(df), splits)):
        if session is not None and canonical(value) == "train":
            by_session.setdefault(session, []).append(i)
    held: set[int] = set()
    for session, rows in by_session.items():
        k = min(per_session, len(rows) - 1)
        if k <= 0:
            continue
        rows = sorted(rows, key=lambda i: (durations[i], ids[i]))
        if pick == "median":
            start = min(max(0, (len(rows) - 1) // 2 - (k - 1) // 2), len(rows) - k)
            held.update(rows[start:start + k])
        else:
            rng = np.random.default_rng(_seed_for(seed, session))
            held.update(rows[int(j)] for j in rng.choice(len(rows), size=k, replace=False))
    new = ["dev" if i in held else v for i, v in enumerate(splits)]
    return df.with_columns(pl.Series("split", new, dtype=pl.String))  # in place, or appended


@dataclass
class HoldoutSummary:
    utterances: int  # marked dev by this call
    seconds: float
    sessions: int  # sessions that gave an utterance
    single: int  # sessions left whole because they have too few training utterances
    out: str


def holdout_manifest(src: str | os.PathLike, out: str | os.PathLike, *, per_session: int = 1,
                     pick: str = "median", seed: int = 0) -> HoldoutSummary:
    """``corpus holdout``: read a segments manifest, :func:`mark_holdout`, write it atomically."""
    df = read_segments(src)
    before = df["split"].to_list() if "split" in df.columns else [None] * df.height
    marked = mark_holdout(df, per_session=per_session, pick=pick, seed=seed)
    after = marked["split"].to_list()
    durations = _durations(df)
    sessions = _session_keys(df)
    new = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    candidates: dict[str, int] = {}
    for s, v in zip(sessions, before):
        if s is not None and canonical(v) == "train":
            candidates[s] = candidates.get(s, 0) + 1
    write_segments(marked, out)
    return HoldoutSummary(utterances=len(new), seconds=float(sum(durations[i] for i in new)),
                          sessions=len({sessions[i] for i in new}),
                          single=sum(1 for n in candidates.values() if n <= 1), out=str(out))


__all__ = ["CHOICES", "LeftOut", "PICKS", "SPLITS", "canonical", "check_choice",
           "holdout_manifest", "is_held_out", "mark_holdout", "select", "select_segments",
           "split_of"]
