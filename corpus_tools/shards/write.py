"""Writing a shard directory: cut each planned segment from its recording, encode it, write
the shards (resuming from the markers), then the index once every shard is finished.

How segments are cut depends on the source. A soundfile source (wav, flac, ogg, aiff) reads
each segment's range exactly and cheaply, so a shard of such sources only is written on its
own, segment by segment, as it always was. A compressed source (mp3, mp4, MXF, anything else
FFmpeg reads) would need one ffmpeg run per segment for a ranged read; instead it is decoded
whole (``load_audio(path)``: the decode the segment stage ran, which its timestamps refer
to) and each segment is the slice of that decode. The length-sorted plan spreads one
recording over many shards, so the shards that share a compressed recording are written in
groups of up to ``MAX_OPEN_SHARDS`` open at once (one open file each): a group's items are
taken in key order across its shards, and each recording is decoded once per group. With
``workers > 1`` the calling process writes the group's shards and the worker processes
decode and encode one recording's run of items each, so the decoding is spread without
being repeated.

Memory: a 3 h recording is about 700 MB decoded (16 kHz float32). A process holds one decode
at a time (at most ``KEEP_DECODED`` when segment ids interleave recordings), plus the
decoder's transient copy while it decodes; a pool worker also holds its run's encoded audio
(about 350 MB for 3 h of wav) until the writer takes it, and the writer at most
``workers + 1`` such runs.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import multiprocessing as mp
import os
from collections import Counter, OrderedDict, deque
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl

# _SOUNDFILE_EXT: the suffixes load_audio reads with soundfile (exact ranged reads)
from corpus_tools.audio import _SOUNDFILE_EXT, SAMPLE_RATE, encode_audio, load_audio
from corpus_tools.progress import progress_bar
from corpus_tools.shards.plan import ShardSpec, plan_shards
from corpus_tools.shards.state import (finished_marker, index_frame, open_out_dir, write_distribution,
                                       write_index, write_marker, write_plan)
from corpus_tools.shards.tar_writer import ShardTarWriter, temp_path

log = logging.getLogger(__name__)

FORMATS = ("wav", "flac")
MAX_OPEN_SHARDS = 256  # shards filled at once from one decode per recording (one open file each)
KEEP_DECODED = 2  # whole-file decodes held at once (2 only when segment ids interleave recordings)


def exact_ranged(path: str) -> bool:
    """Whether ``load_audio`` reads a time range of ``path`` exactly and cheaply (soundfile:
    wav, flac, ogg, aiff); every other container goes through FFmpeg."""
    return Path(path).suffix.lower() in _SOUNDFILE_EXT


def _fit(x: np.ndarray, num_frames: int) -> np.ndarray:
    """``x`` trimmed or zero-padded at the end to ``num_frames`` samples."""
    if len(x) >= num_frames:
        return x[:num_frames]
    return np.concatenate([x, np.zeros(num_frames - len(x), dtype=np.float32)])


def cut_segment(path: str, start: float, num_frames: int) -> np.ndarray:
    """``num_frames`` samples of ``path`` from ``start`` at 16 kHz (zero-padded at the end),
    by a ranged read (one ffmpeg run for a compressed source)."""
    return _fit(load_audio(path, start, start + num_frames / SAMPLE_RATE, SAMPLE_RATE), num_frames)


def slice_segment(audio: np.ndarray, start: float, num_frames: int) -> np.ndarray:
    """``num_frames`` samples from ``start`` of a whole recording decoded at 16 kHz
    (zero-padded at the end): the segment on the decode's own sample grid."""
    first = int(round(start * SAMPLE_RATE))
    return _fit(audio[first:first + num_frames], num_frames)


class _Recordings:
    """Cuts segments: ranged reads of soundfile sources, slices of whole-file decodes of the
    others. Keeps the last ``KEEP_DECODED`` decodes (evicting before it decodes the next)."""

    def __init__(self) -> None:
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()

    def cut(self, it: dict) -> np.ndarray:
        if exact_ranged(it["path"]):
            return cut_segment(it["path"], it["start"], it["num_frames"])
        return slice_segment(self._decode(it["path"]), it["start"], it["num_frames"])

    def _decode(self, path: str) -> np.ndarray:
        if path in self._decoded:
            self._decoded.move_to_end(path)
            return self._decoded[path]
        while len(self._decoded) >= KEEP_DECODED:
            self._decoded.popitem(last=False)
        self._decoded[path] = x = load_audio(path)  # the segment stage's decode
        return x

    def release(self, path: str) -> None:
        """Drop ``path``'s decode: no later item needs it."""
        self._decoded.pop(path, None)


def _items(spec: ShardSpec) -> Iterator[dict]:
    """A shard's items in key order, without keeping them when the plan makes them on demand
    (a compact plan's ``iter_items``), so that a group of shards never holds them all."""
    return spec.iter_items() if hasattr(spec, "iter_items") else iter(spec.items)


def _schedule(specs: list[ShardSpec]) -> Iterator[tuple[ShardSpec, dict]]:
    """The items of ``specs`` merged in key order across the shards (keys are unique in a
    plan), streamed. Keys begin with the recording's id (the segment stage's ids do), so a
    recording's items come together and it is decoded once; within each shard this is its
    member order."""
    def keyed(spec: ShardSpec) -> Iterator[tuple[str, ShardSpec, dict]]:
        return ((it["key"], spec, it) for it in _items(spec))

    return ((s, it) for _, s, it in heapq.merge(*map(keyed, specs), key=lambda k: k[0]))


def _encode_here(specs: list[ShardSpec], fmt: str) -> Iterator[tuple[ShardSpec, dict, bytes]]:
    """``(spec, item, encoded audio)`` in key order, cut in this process. A first pass over the
    keys finds each recording's last item, after which its decode is dropped: one decode is
    held at a time when a recording's items come together."""
    last_use = {it["path"]: i for i, (_, it) in enumerate(_schedule(specs))}
    recordings = _Recordings()
    for i, (spec, it) in enumerate(_schedule(specs)):
        x = recordings.cut(it)
        if last_use[it["path"]] == i:
            recordings.release(it["path"])
        yield spec, it, encode_audio(x, SAMPLE_RATE, fmt)


def _encode_run(items: list[dict], fmt: str) -> list[bytes]:
    """A pool task: the encoded audio of a run of one recording's items."""
    recordings = _Recordings()
    return [encode_audio(recordings.cut(it), SAMPLE_RATE, fmt) for it in items]


def _encode_in_pool(pool: Executor, specs: list[ShardSpec], fmt: str,
                    ahead: int) -> Iterator[tuple[ShardSpec, dict, bytes]]:
    """``(spec, item, encoded audio)`` in key order, from pool tasks of one run of a
    recording's items each; at most ``ahead`` runs are in flight or waiting, which bounds the
    memory they hold."""
    waiting: deque = deque()
    for _, run in itertools.groupby(_schedule(specs), key=lambda p: p[1]["path"]):
        run = list(run)
        waiting.append((run, pool.submit(_encode_run, [it for _, it in run], fmt)))
        if len(waiting) >= ahead:
            oldest, fut = waiting.popleft()
            yield from ((s, it, data) for (s, it), data in zip(oldest, fut.result()))
    for oldest, fut in waiting:
        yield from ((s, it, data) for (s, it), data in zip(oldest, fut.result()))


def _finish(out: Path, spec: ShardSpec, shard: ShardTarWriter, fmt: str, fingerprint: str) -> dict:
    """Close a shard (atomic rename), then write its marker."""
    stats = dict(shard.close())
    stats.update(shard_idx=spec.index, partial=spec.partial, format=fmt, fingerprint=fingerprint)
    write_marker(out, spec.name, stats)
    return stats


def _write_group(out_dir: str, specs: list[ShardSpec], fmt: str, fingerprint: str,
                 advance: Callable[[float], None] | None = None, pool: Executor | None = None,
                 ahead: int = 1) -> list[dict]:
    """Write the shards ``specs`` together, and their markers; returns the markers.

    Items go in key order across the shards, cut and encoded here (``pool`` None; also how a
    pool worker writes a shard of soundfile sources) or by ``pool`` tasks, one run of a
    recording's items each, ``ahead`` at a time. A shard is closed and marked as soon as its
    last item is in; ``advance(seconds)`` is told each item's audio. A failure removes the
    temp files of the shards not yet closed.
    """
    out = Path(out_dir)
    left = Counter(s.name for s, _ in _schedule(specs))
    encoded = _encode_in_pool(pool, specs, fmt, ahead) if pool else _encode_here(specs, fmt)
    markers = []
    with contextlib.ExitStack() as stack:
        shards = {s.name: stack.enter_context(ShardTarWriter(out / s.name)) for s in specs}
        for spec, it, data in encoded:
            shards[spec.name].add(it["key"], data, it["meta"])
            left[spec.name] -= 1
            if left[spec.name] == 0:
                markers.append(_finish(out, spec, shards[spec.name], fmt, fingerprint))
            if advance:
                advance(it["meta"]["duration"])
        # a shard without items (the plan makes none) is an empty tar, as write_one_shard's
        markers += [_finish(out, s, shards[s.name], fmt, fingerprint) for s in specs if s.name not in left]
    return markers


def _groups(todo: list[ShardSpec]) -> tuple[list[list[ShardSpec]], list[ShardSpec]]:
    """Which shards are written together: groups of up to ``MAX_OPEN_SHARDS`` consecutive
    shards that share a compressed recording with another shard (each group decodes each of
    its recordings once), and the other shards, written one at a time: those of soundfile
    sources only (ranged reads are exact and cheap) and those whose compressed recordings are
    in no other shard (one file per utterance, as Common Voice or MLS: one decode each
    anyway). A shard written alone finishes and resumes at the finest grain."""
    paths = [{it["path"] for it in _items(s) if not exact_ranged(it["path"])} for s in todo]
    shards_of = Counter(p for ps in paths for p in ps)
    shared, alone = [], []
    for s, ps in zip(todo, paths):
        (shared if any(shards_of[p] > 1 for p in ps) else alone).append(s)
    step = MAX_OPEN_SHARDS
    return [shared[i:i + step] for i in range(0, len(shared), step)], alone


def _write_here(out: Path, groups: list[list[ShardSpec]], alone: list[ShardSpec], fmt: str,
                fingerprint: str, advance: Callable[[float], None]) -> None:
    """Everything in this process, in shard order."""
    for g in sorted(groups + [[s] for s in alone], key=lambda g: g[0].index):
        _write_group(str(out), g, fmt, fingerprint, advance)


def _write_in_pool(out: Path, groups: list[list[ShardSpec]], alone: list[ShardSpec], fmt: str,
                   fingerprint: str, workers: int, advance: Callable[[float], None]) -> None:
    """With ``workers`` processes: this process writes each group while the workers decode
    and encode its runs; then each shard of soundfile sources is a worker task of its own."""
    # spawn: polars and torch are not fork-safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        for g in groups:
            _write_group(str(out), g, fmt, fingerprint, advance, pool=ex, ahead=workers + 1)
        futs = [(s, ex.submit(_write_group, str(out), [s], fmt, fingerprint)) for s in alone]
        for s, f in futs:
            f.result()
            advance(s.seconds)


def write_shards(segments_df: pl.DataFrame, out_dir: str | os.PathLike, *,
                 samples_per_shard: int = 5000, max_shard_bytes: int | None = None,
                 strategy: str = "length_sorted", fmt: str = "wav", seed: int = 0,
                 prefix: str = "shard", workers: int = 1, progress: bool = True,
                 num_shards: int = 1, shard_index: int = 0,
                 overwrite: bool = False, split: str = "train") -> pl.DataFrame:
    """Cut every segment of ``split`` from its recording and write tar shards plus an index.

    ``split``: train (default: rows whose split is null or train), dev, test or all.

    Resumes: shards whose marker matches the plan are kept, the rest are (re)written.
    ``num_shards``/``shard_index`` write only shards with ``idx % num_shards ==
    shard_index`` (several machines or Ray tasks sharing one output directory); the index
    ``shards.parquet`` is written by whichever call finds every shard finished. Returns the
    index of the finished shards (all of them once the directory is complete).

    ``workers > 1``: a process pool writes the shards of soundfile sources in parallel and
    decodes and encodes compressed recordings for the shards this process writes (see the
    module docstring for how segments are cut and what memory that takes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    out = Path(out_dir)
    specs = plan_shards(segments_df, samples_per_shard=samples_per_shard,
                        max_shard_bytes=max_shard_bytes, strategy=strategy, seed=seed,
                        prefix=prefix, split=split)
    fingerprint = open_out_dir(out, specs, fmt, prefix, overwrite)
    write_plan(out, {"fingerprint": fingerprint, "format": fmt, "strategy": strategy,
                     "seed": seed, "samples_per_shard": samples_per_shard,
                     "max_shard_bytes": max_shard_bytes, "prefix": prefix,
                     "shards": [s.name for s in specs]})
    write_distribution(out, specs)

    mine = [s for s in specs if s.index % num_shards == shard_index]
    todo = []
    for s in mine:
        temp_path(out / s.name).unlink(missing_ok=True)  # left by a crash of this subset
        if finished_marker(out, s.name, fingerprint) is None:
            todo.append(s)
    if len(todo) < len(mine):
        log.info("resuming: %d of %d shards already written", len(mine) - len(todo), len(mine))

    groups, alone = _groups(todo)
    with progress_bar(disable=None if progress and todo else True) as bar:
        task = bar.add_task(f"writing {len(todo)} shards", total=sum(s.seconds for s in todo),
                            info="s audio")

        def advance(seconds: float) -> None:
            bar.update(task, advance=seconds)

        if workers > 1 and (groups or len(alone) > 1):
            _write_in_pool(out, groups, alone, fmt, fingerprint, workers, advance)
        else:
            _write_here(out, groups, alone, fmt, fingerprint, advance)

    markers = [m for s in specs if (m := finished_marker(out, s.name, fingerprint)) is not None]
    if len(markers) == len(specs):
        return write_index(out, markers)
    return index_frame(markers)
