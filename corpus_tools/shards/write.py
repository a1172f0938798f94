"""Writing a shard directory: cut each planned segment from its recording, encode it, write
the shards (resuming from the markers), then the index once every shard is finished."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from corpus_tools.audio import SAMPLE_RATE, encode_audio, load_audio
from corpus_tools.progress import progress_bar
from corpus_tools.shards.plan import ShardSpec, plan_shards
from corpus_tools.shards.state import (finished_marker, index_frame, open_out_dir, write_distribution,
                                       write_index, write_marker, write_plan)
from corpus_tools.shards.tar_writer import temp_path, write_one_shard

log = logging.getLogger(__name__)

FORMATS = ("wav", "flac")


def cut_segment(path: str, start: float, num_frames: int) -> np.ndarray:
    """``num_frames`` samples of ``path`` from ``start`` at 16 kHz (zero-padded at the end)."""
    x = load_audio(path, start, start + num_frames / SAMPLE_RATE, SAMPLE_RATE)
    if len(x) >= num_frames:
        return x[:num_frames]
    return np.concatenate([x, np.zeros(num_frames - len(x), dtype=np.float32)])


def _spec_items(spec: ShardSpec, fmt: str) -> Iterator[tuple[str, bytes, dict]]:
    for it in spec.items:  # key order; segment ids usually keep a recording together
        x = cut_segment(it["path"], it["start"], it["num_frames"])
        yield it["key"], encode_audio(x, SAMPLE_RATE, fmt), it["meta"]


def _write_spec(out_dir: str, spec: ShardSpec, fmt: str, fingerprint: str) -> dict:
    """Write one planned shard and its marker (runs in a worker process)."""
    out = Path(out_dir)
    stats = write_one_shard(out / spec.name, _spec_items(spec, fmt), presorted=True)
    stats.update(shard_idx=spec.index, partial=spec.partial, format=fmt, fingerprint=fingerprint)
    write_marker(out, spec.name, stats)
    return stats


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

    with progress_bar(disable=None if progress and todo else True) as bar:
        task = bar.add_task(f"writing {len(todo)} shards", total=sum(s.seconds for s in todo),
                            info="s audio")
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                _write_spec(str(out), s, fmt, fingerprint)
                bar.update(task, advance=s.seconds)
        else:
            # spawn: polars and torch are not fork-safe
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
                futs = [ex.submit(_write_spec, str(out), s, fmt, fingerprint) for s in todo]
                for s, f in zip(todo, futs):
                    f.result()
                    bar.update(task, advance=s.seconds)

    markers = [m for s in specs if (m := finished_marker(out, s.name, fingerprint)) is not None]
    if len(markers) == len(specs):
        return write_index(out, markers)
    return index_frame(markers)
