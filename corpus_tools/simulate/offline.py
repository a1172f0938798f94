"""``corpus simulate``: degrade a source batch by batch and write listenable shards.

The source (a segments manifest, LibriSpeech itself, or shards) is listed once, batched with
the trainer's own duration batcher, run through the same :class:`Simulator` the trainer uses
(``batch_rng(seed, batch_index)``, so a batch gets the same degradation online and offline)
and written with ``corpus shard``'s writer, next to a per-utterance table and a run summary.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from corpus_tools import shards as shardlib
from corpus_tools.atomic import write_text
from corpus_tools.audio import SAMPLE_RATE, encode_audio, load_audio
from corpus_tools.data.batch import Utterance
from corpus_tools.data.batching import duration_batches
from corpus_tools.data.rng import batch_rng
from corpus_tools.data.tar_index import read_shard_records
from corpus_tools.manifests import write_parquet_atomic
from corpus_tools.simulate.conditions import Condition
from corpus_tools.simulate.pools import (SpeechPool, manifest_rows, read_shard_audio, shard_paths,
                                         str_or_none)
from corpus_tools.simulate.simulator import Simulator
from corpus_tools.splits import canonical, select


@dataclass
class SourceItem:
    """One source utterance before decoding: its shard-json meta and where its audio is."""

    key: str
    meta: dict
    seconds: float
    path: str | None = None  # a media file (segments manifest) ...
    start: float | None = None
    end: float | None = None
    loc: tuple[str, int, int] | None = None  # ... or (shard, byte offset, size)

    def load(self) -> np.ndarray:
        if self.loc is not None:
            return read_shard_audio(self.loc)
        return load_audio(self.path, self.start, self.end, SAMPLE_RATE)


def source_items(source: str | Path | Sequence[str]) -> list[SourceItem]:
    """The utterances of a segments manifest or of WebDataset shards, in source order."""
    shards = shard_paths(source)
    if shards:
        items = []
        for shard in shards:
            for rec in read_shard_records(shard):
                if rec.offset < 0:
                    raise ValueError(f"{shard}: compressed shards are not supported as a source")
                sr = int(rec.meta.get("sample_rate", SAMPLE_RATE))
                items.append(SourceItem(rec.key, dict(rec.meta), rec.num_frames / sr,
                                        loc=(shard, rec.offset, rec.size)))
        return items
    items = []
    for r in manifest_rows(source, "librispeech"):
        start, end = float(r.get("start") or 0.0), r.get("end")
        dur = r.get("duration")
        if dur is None and end is not None:
            dur = float(end) - start
        if dur is None:
            raise ValueError(f"segment {r.get('segment_id')} has neither duration nor end")
        sid = str(r.get("segment_id"))
        meta = {"id": sid, "num_frames": int(round(float(dur) * SAMPLE_RATE)),
                "sample_rate": SAMPLE_RATE, "duration": float(dur),
                "transcript": r.get("text") or "", "speaker": str_or_none(r.get("speaker")),
                "recording": str_or_none(r.get("recording_id")), "session": str_or_none(r.get("session")),
                "language": r.get("language"), "method": r.get("method")}
        if r.get("split") is not None:
            meta["split"] = canonical(r["split"])
        items.append(SourceItem(sid, meta, float(dur), path=str(r["path"]),
                                start=start, end=None if end is None else float(end)))
    return items


def offline_batches(items: Sequence[SourceItem], batch_seconds: float, *, seed: int,
                    shuffle: bool = True, bucket_buffer: int = 50,
                    max_span_seconds: float | None = 10.0,
                    length_growth: float = 1.0) -> list[list[int]]:
    """The trainer's duration batches over the source (item indices).

    The source order is shuffled with the seed first (a LibriSpeech manifest is sorted by
    speaker and chapter; the trainer shuffles too), then fed to the trainer's own batcher
    :func:`corpus_tools.data.batching.duration_batches` with the trainer's defaults, on the budget
    divided by the condition's ``length_growth`` (as ``ShardBatchStream`` does).
    """
    order = np.arange(len(items))
    if shuffle:
        order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(items))
    lengths = [items[i].seconds for i in order]
    batches = duration_batches(lengths, batch_seconds / length_growth, bucket_buffer=bucket_buffer,
                               max_span_seconds=max_span_seconds, span_policy="split")
    return [[int(order[j]) for j in b] for b in batches]


def _json_safe(v):
    """JSON-ready copy of a meta value (numpy scalars → Python)."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


OUTPUT_FILES = ("shards.parquet", "simulation.parquet", "simulation.json")


def _clear_output(out: Path, overwrite: bool) -> None:
    """Refuse a folder holding shards (unless ``overwrite``), then empty it of our files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    old = sorted(out.glob("shard.*.tar")) if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} shards; pass --overwrite or "
                              "choose another output folder")
    for p in old + [out / n for n in OUTPUT_FILES]:
        p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_shard_set(out: Path, items: Iterable[tuple[str, bytes, dict]], count: int,
                     shard_size: int, audio_format: str, on_shard=None) -> list[dict]:
    """Stream ``count`` sorted ``(key, audio, json)`` items into ``shard.NNNNNN[.partial].tar``
    files of ``shard_size`` with `corpus shard`'s writer, then write ``shards.parquet``."""
    stream = iter(items)
    n_shards = math.ceil(count / max(1, shard_size))
    index = []
    for k in range(n_shards):
        partial = k == n_shards - 1 and count % shard_size != 0
        name = shardlib.shard_name("shard", k, partial)
        if on_shard is not None:
            on_shard(name)
        info = shardlib.write_one_shard(out / name, itertools.islice(stream, shard_size),
                                        presorted=True)
        index.append({**info, "shard_idx": k, "partial": partial, "format": audio_format})
    for _ in stream:  # nothing may be left (the count of utterances never changes)
        raise RuntimeError("more utterances than planned for the shards")
    write_parquet_atomic(pl.DataFrame(
        [{"name": m["name"], "shard_idx": m["shard_idx"], "partial": m["partial"],
          "count": m["count"], "hours": m["seconds"] / 3600.0, "min_duration": m["min_duration"],
          "max_duration": m["max_duration"], "num_frames": m["num_frames"], "bytes": m["bytes"],
          "sha256": m["sha256"], "format": m["format"]} for m in index],
        schema=shardlib.INDEX_SCHEMA), out / shardlib.INDEX_NAME)
    return index


def write_plain_shards(items: Sequence[SourceItem], out_dir: str | Path, *,
                       shard_size: int = 5000, audio_format: str = "wav",
                       overwrite: bool = False) -> list[dict]:
    """The utterances as they are (never degraded), in key order: the validation shards of
    ``corpus simulate --val-output``. Returns the shard index rows."""
    out = Path(out_dir)
    _clear_output(out, overwrite)
    ordered = sorted(items, key=lambda it: it.key)

    def encoded():
        for it in ordered:
            yield it.key, encode_audio(it.load(), SAMPLE_RATE, audio_format), _json_safe(it.meta)

    return _write_shard_set(out, encoded(), len(ordered), shard_size, audio_format)


def simulate_offline(condition: str | Condition, source: str | Path, out_dir: str | Path, *,
                     noise: str | Path | None = None, music: str | Path | None = None,
                     stems: str | Path | None = None, seed: int = 0,
                     batch_seconds: float = 150.0, bucket_buffer: int = 50,
                     max_span_seconds: float | None = 10.0, shuffle: bool = True,
                     shard_size: int = 5000, audio_format: str = "wav",
                     overwrite: bool = False, on_batch=None, split: str = "train",
                     val_output: str | Path | None = None,
                     max_utterance_seconds: float = 30.0) -> dict:
    """``corpus simulate``: degrade ``source`` batch by batch and write shards to ``out_dir``.

    Only the source's ``split`` rows are written (default train: rows whose split is null or
    train; dev | test | all on request — dev and test utterances are never degraded either
    way); ``val_output`` also writes the dev rows, undegraded, as a separate shard set.
    Shards are written with the shard writer of ``corpus shard``
    (:func:`corpus_tools.shards.write_one_shard`: fixed tar metadata, json + wav members,
    atomic rename, ``shard.000000.tar`` … ``.partial.tar`` for the incomplete last one) and
    streamed, so memory holds one batch. Keys are ``{batch:06d}-{segment key}``: reading the
    shards in order gives the simulated batches back, and a batch's utterances are in key
    order; the json ``id`` is the source segment id. Also written: ``shards.parquet`` (the
    shard index of ``corpus shard``), ``simulation.parquet`` (one row per utterance: batch,
    shard and everything in its ``simulation`` json) and ``simulation.json`` (settings and
    totals). ``on_batch(n_utterances, seconds)`` is called after each batch (progress bars).
    Returns the run summary (also in ``simulation.json``).
    """
    if audio_format not in ("wav", "flac"):
        raise ValueError(f"audio format must be wav or flac, not {audio_format!r}")
    out = Path(out_dir)
    if val_output is not None:
        if split in ("dev", "all"):
            raise ValueError(f"--val-output writes the dev split next to training shards; "
                             f"with --split {split} the dev rows would be in both")
        if Path(val_output).resolve() == out.resolve():
            raise ValueError("--val-output must be another folder than --output")
        _clear_output(Path(val_output), overwrite)  # refuse an occupied folder before any work
    sim = Simulator(condition, noise=noise, music=music, stems=stems, seed=seed, source=source,
                    batch_seconds=batch_seconds, max_utterance_seconds=max_utterance_seconds)
    every = source_items(source)
    if not every:
        raise ValueError(f"the source {source} holds no utterances")
    for item, key in zip(every, shardlib.safe_keys([str(it.meta.get("id", it.key))
                                                      for it in every])):
        item.key = key
    sim._pool = SpeechPool.from_items(every)  # partners the batch lacks come from the source
    items, left = select(every, split, meta=lambda it: it.meta, seconds=lambda it: it.seconds)
    if not items:
        raise ValueError(f"the source {source} holds no {split} utterances: {left.message()}")
    val_items = select(every, "dev", meta=lambda it: it.meta)[0] if val_output is not None else []
    if val_output is not None and not val_items:
        raise ValueError(f"the source {source} holds no dev utterances for --val-output "
                         "(`corpus holdout` marks some)")
    batches = offline_batches(items, batch_seconds, seed=seed, shuffle=shuffle,
                              bucket_buffer=bucket_buffer, max_span_seconds=max_span_seconds,
                              length_growth=sim.length_growth)
    _clear_output(out, overwrite)

    width = max(6, len(str(len(batches) - 1)))
    rows: list[dict] = []
    totals = {"in": 0.0, "out": 0.0}
    current = {"shard": ""}

    def degraded_items():
        for b, idx in enumerate(batches):
            utts = [Utterance(items[i].key, items[i].load(), dict(items[i].meta)) for i in idx]
            totals["in"] += sum(u.audio.size for u in utts) / SAMPLE_RATE
            for u in sorted(sim(utts, batch_rng(seed, b)), key=lambda u: u.key):
                u.meta["simulation"]["batch"] = b
                meta = _json_safe(u.meta)
                if "key" in meta:  # `corpus shard` json names its key: keep it true
                    meta["key"] = f"{b:0{width}d}-{u.key}"
                totals["out"] += u.audio.size / SAMPLE_RATE
                rows.append({**meta["simulation"], "key": f"{b:0{width}d}-{u.key}",
                             "id": str(meta.get("id", u.key)), "shard": current["shard"],
                             "speaker": meta.get("speaker"), "session": meta.get("session"),
                             "num_frames": int(u.audio.size)})
                yield rows[-1]["key"], encode_audio(u.audio, SAMPLE_RATE, audio_format), meta
            if on_batch is not None:
                on_batch(len(utts), sum(u.audio.size for u in utts) / SAMPLE_RATE)

    index = _write_shard_set(out, degraded_items(), len(items), shard_size, audio_format,
                             on_shard=lambda name: current.update(shard=name))
    table = pl.from_dicts(rows, infer_schema_length=None)
    write_parquet_atomic(table, out / "simulation.parquet")
    val_index = (write_plain_shards(val_items, val_output, shard_size=shard_size,
                                    audio_format=audio_format, overwrite=overwrite)
                 if val_output is not None else [])
    summary = {
        "condition": sim.condition.name, "op": sim.condition.op,
        "source_kind": sim.condition.source, "percent": sim.condition.percent,
        "seed": int(seed), "source": str(source),
        "noise": None if noise is None else str(noise),
        "music": None if music is None else str(music),
        "stems": None if stems is None else str(stems), "batch_seconds": batch_seconds,
        "max_utterance_seconds": max_utterance_seconds, "length_growth": sim.length_growth,
        "bucket_buffer": bucket_buffer, "max_span_seconds": max_span_seconds, "shuffle": shuffle,
        "snr_db": list(sim.settings.snr_db), "batches": len(batches), "utterances": len(rows),
        "modified": int(table["modified"].sum()), "input_seconds": round(totals["in"], 3),
        "output_seconds": round(totals["out"], 3),
        "shards": [{"name": m["name"], "count": m["count"], "sha256": m["sha256"]}
                   for m in index],
        "split": split,
        "left_out": {"utterances": dict(left.counts),
                     "seconds": {k: round(v, 3) for k, v in left.seconds.items()},
                     "message": left.message() if left else None},
    }
    if val_output is not None:
        summary["val_output"] = {"path": str(val_output), "utterances": len(val_items),
                                 "shards": [{"name": m["name"], "count": m["count"],
                                             "sha256": m["sha256"]} for m in val_index]}
    write_text(out / "simulation.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
