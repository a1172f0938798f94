"""Label subsets: a random part of a corpus holding a given number of hours, drawn by duration.

A label budget (10 min, 1 h, 10 h, 100 h of transcribed speech) is met by visiting the
utterances in a seeded random order and taking them until the budget is reached
(``draw_subset``), so the same seed gives the same subset and smaller budgets of one seed are
nested in bigger ones. The draw works on a segments manifest (``subset_manifest``) or on a shard
set, whose audio bytes are copied as they are into new length-sorted shards (``subset_shards``).

A budget within ``WHOLE_SET_TOLERANCE`` of what the data holds takes it all: standard splits are
a little over their nominal size (train-clean-100 holds 100.6 h), and a random trim of the last
fraction would train the 100 h budget on an arbitrary 99.4 % of the split the literature reports
on. ``prepare_training_data`` applies all of this to the training data of a fine-tuning run.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from corpus_tools.atomic import atomic_path, write_text
from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.data.members import read_member
from corpus_tools.data.tar_index import list_shards, read_shard_records
from corpus_tools.manifests import read_segments, write_parquet_atomic
from corpus_tools.shards.tar_writer import write_one_shard
from corpus_tools.shards.write import write_shards
from corpus_tools.splits import select_segments

MANIFEST_SUFFIXES = (".parquet", ".csv", ".tsv")
# A label budget uses the whole set when the set holds at most this fraction more.
WHOLE_SET_TOLERANCE = 0.05


def draw_subset(durations: list[float], hours: float, seed: int) -> list[int]:
    """Indices of a random subset holding ``hours`` of audio (sorted).

    The items are visited in a random order (``seed``) and taken while the total stays below the
    budget, so the subset holds ≥ ``hours`` minus less than one utterance, and the same seed and
    list give the same subset. Smaller budgets of one seed are nested in bigger ones.
    """
    if hours <= 0:
        raise ValueError("hours must be positive")
    budget = hours * 3600.0
    order = np.random.default_rng(seed).permutation(len(durations))
    taken, total = [], 0.0
    for i in order:
        if total >= budget:
            break
        taken.append(int(i))
        total += float(durations[i])
    return sorted(taken)


def _durations() -> pl.Expr:
    return pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start"))


def subset_manifest(df: pl.DataFrame, hours: float, seed: int) -> pl.DataFrame:
    """Rows of a segments manifest holding ``hours`` of audio, drawn by ``draw_subset``."""
    df = df.sort("segment_id")
    return df[draw_subset(df.select(_durations()).to_series().to_list(), hours, seed)]


def shard_index(src) -> list[dict]:
    """``{key, shard, offset, size, data, meta, seconds}`` per utterance of a shard set (headers + json only)."""
    out = []
    for path in list_shards(src):
        for rec in read_shard_records(path):
            out.append({"key": rec.key, "shard": path, "offset": rec.offset, "size": rec.size, "data": rec.data,
                        "meta": rec.meta, "seconds": rec.num_frames / SAMPLE_RATE})
    return out


def _audio_bytes(item: dict) -> bytes:
    return item["data"] if item["data"] is not None else read_member(item["shard"], item["offset"], item["size"])


def subset_shards(src, out_dir: str | Path, hours: float, seed: int, *, samples_per_shard: int = 5000,
                  items: list[dict] | None = None) -> dict:
    """Copy a ``hours`` subset of a shard set (audio bytes as they are) into new shards in ``out_dir``.

    Utterances are ordered by length before cutting shards (length-sorted bins, as
    ``corpus shard``). A ``subset.json`` records the choice; a rerun with the same source,
    hours and seed reuses the folder.
    """
    items = sorted(shard_index(src) if items is None else items, key=lambda it: it["key"])
    if not items:
        raise FileNotFoundError(f"no utterances in {src}")
    chosen = [items[i] for i in draw_subset([it["seconds"] for it in items], hours, seed)]
    digest = hashlib.sha256("\n".join(f"{it['shard']}:{it['key']}" for it in chosen).encode()).hexdigest()
    out = Path(out_dir)
    marker = out / "subset.json"
    info = {"source": [str(s) for s in ([src] if isinstance(src, (str, Path)) else src)], "hours": hours,
            "seed": seed, "utterances": len(chosen), "selected_hours": sum(it["seconds"] for it in chosen) / 3600,
            "available_hours": sum(it["seconds"] for it in items) / 3600, "digest": digest}
    if marker.exists() and json.loads(marker.read_text()).get("digest") == digest:
        return info
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    chosen.sort(key=lambda it: (it["seconds"], it["key"]))
    groups = [chosen[i:i + samples_per_shard] for i in range(0, len(chosen), samples_per_shard)]
    for g, group in enumerate(groups):
        partial = g == len(groups) - 1 and len(group) < samples_per_shard
        name = f"subset.{g:06d}.partial.tar" if partial else f"subset.{g:06d}.tar"
        # Keys may repeat across source shard sets: prefix with the position when they do.
        keys = [it["key"] for it in group]
        clash = len(set(keys)) < len(keys)
        write_one_shard(out / name, [((f"{i:07d}_{it['key']}" if clash else it["key"]), _audio_bytes(it), it["meta"])
                                     for i, it in enumerate(group)])
    write_text(marker, json.dumps(info, indent=2))
    return info


def shard_set_error(src: str) -> str | None:
    """Why ``src`` (a folder, glob, file or list of them) is not a set of tar shards; None when it is."""
    try:
        found = list_shards(src)
    except (FileNotFoundError, ValueError):
        found = []
    if not found:
        return f"no *.tar shards found in {src}"
    for path in found:
        if not tarfile.is_tarfile(path):
            return f"{path} is not a tar shard (write shards with `corpus shard`)"
    return None


def is_manifest(src) -> bool:
    return isinstance(src, (str, Path)) and Path(src).suffix in MANIFEST_SUFFIXES and Path(src).is_file()


def uses_whole_set(available_hours: float, label_hours: float) -> bool:
    """Whether a label budget takes all the data: it holds at most ``WHOLE_SET_TOLERANCE`` more."""
    return available_hours <= (1.0 + WHOLE_SET_TOLERANCE) * label_hours


def whole_set_message(what: str, available: float, label_hours: float) -> str:
    over = "≤" if available <= label_hours else f"within {100 * WHOLE_SET_TOLERANCE:g} % of"
    return f"{what} {available:.3f} h, {over} the {label_hours:g} h label budget: using them all"


def write_subset(src: str, hours: float, seed: int, out: str | Path) -> str:
    """``corpus subset``: a manifest's subset to a manifest (``.csv`` or Parquet), a shard set's to a
    shard folder; returns the line that says what was written."""
    out = Path(out)
    if Path(src).suffix not in MANIFEST_SUFFIXES:
        info = subset_shards(src, out, hours, seed)
        return (f"wrote {out}: {info['utterances']} utterances, {info['selected_hours']:.3f} h of "
                f"{info['available_hours']:.3f} h")
    df = read_segments(src)
    sub = subset_manifest(df, hours, seed)
    if out.suffix == ".csv":
        with atomic_path(out) as tmp:
            sub.write_csv(tmp)
    else:
        write_parquet_atomic(sub, out)
    total = float(sub["duration"].fill_null(0).sum()) / 3600
    return f"wrote {out}: {sub.height} of {df.height} segments, {total:.3f} h"


def prepare_training_data(src: str, label_hours: float | None, seed: int, run_dir: Path,
                          log: Callable[[str], Any] = print) -> tuple[str, dict]:
    """The shard set a fine-tuning run in ``run_dir`` trains on: ``src`` itself, a label subset of
    it, or shards written from a manifest (both in ``run_dir/data/``); and what was chosen.

    A label budget draws a subset only from data holding more than ``1 + WHOLE_SET_TOLERANCE``
    times the budget (``uses_whole_set``); otherwise all the data is used.
    """
    info: dict[str, Any] = {"source": str(src)}
    if is_manifest(src):
        # Labels come from training rows only: a manifest that also holds dev/test rows must not
        # train on them, and the label budget is drawn from what is trained on.
        df, left_out = select_segments(read_segments(src), "train")
        if left_out:
            log(f"{src}: {left_out.message().split(';')[0]}")
        if df.height == 0:
            raise ValueError(f"{src} holds no training rows (its split column marks every row dev or "
                             "test); fine-tune on a manifest with train rows")
        if label_hours is not None:
            available = float(df.select(_durations().sum()).item() or 0.0) / 3600
            if uses_whole_set(available, label_hours):
                log(whole_set_message("the training manifest holds", available, label_hours))
                info.update(available_hours=available, selected_hours=available)
            else:
                df = subset_manifest(df, label_hours, seed)
                info.update(hours=label_hours, seed=seed)
        folder = run_dir / "data" / "train"
        log(f"writing {df.height} labelled segments to shards in {folder}")
        write_shards(df, folder, progress=True, overwrite=True, seed=seed)
        info.update(shards=str(folder), utterances=df.height)
        return str(folder), info
    if label_hours is None:
        return src, info
    items = shard_index(src)
    available = sum(it["seconds"] for it in items) / 3600
    if uses_whole_set(available, label_hours):
        log(whole_set_message("the training shards hold", available, label_hours))
        info.update(available_hours=available, selected_hours=available, utterances=len(items))
        return src, info
    folder = run_dir / "data" / f"train-{label_hours:g}h-seed{seed}"
    sub = subset_shards(src, folder, label_hours, seed, items=items)
    log(f"label subset: {sub['utterances']} utterances, {sub['selected_hours']:.3f} h of "
        f"{sub['available_hours']:.3f} h (seed {seed}) in {folder}")
    info.update(sub, shards=str(folder))
    return str(folder), info
