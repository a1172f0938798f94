"""Benchmark shard writing and reading (wav vs flac), against baselines run alongside.

    python benchmarks/shards.py [--hours 0.5] [--source wav16|flac44] [--workdir DIR]

Measures, in one process on one core (torch/BLAS threads pinned to 1):

* write: ``corpus_tools.shards.write_shards`` — cut segments from recordings, resample to
  16 kHz, encode, tar, hash — in × real time per core (audio seconds / CPU seconds).
  Baseline: the same cutting and encoding written with ``webdataset.TarWriter``.
* read: ``corpus_tools.data.stream.ShardBatchStream`` — tar headers + json, shuffle buffer,
  duration batching, decode, zero-padded batch tensors — in seconds of audio per second
  per core. Baseline: ``webdataset.WebDataset`` + soundfile decode + fixed 8-utterance
  padded batches (no duration batching).

Targets: read ≥ 20,000 s audio/s/core for wav; write ≥ 500× real time/core.
Numbers are CPU-time based (``time.process_time``) so that other load on the machine
does not distort them; wall-clock figures are printed next to them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl
import soundfile as sf


def make_corpus(root: Path, hours: float, source: str, seed: int = 0) -> pl.DataFrame:
    """Five-minute recordings cut into LibriSpeech-like segments (gamma, 2–30 s)."""
    rng = np.random.default_rng(seed)
    sr, ext = (16000, "wav") if source == "wav16" else (44100, "flac")
    rec_seconds = 300.0
    rows = []
    for r in range(max(1, int(np.ceil(hours * 3600 / rec_seconds)))):
        n = int(rec_seconds * sr)
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        path = root / f"rec{r:03d}.{ext}"
        sf.write(path, x, sr, subtype="PCM_16")
        t, i = 0.0, 0
        while True:
            d = float(np.clip(rng.gamma(4.0, 3.0), 2.0, 30.0))
            if t + d > rec_seconds:
                break
            rows.append({"segment_id": f"rec{r:03d}-{i:04d}", "recording_id": f"rec{r:03d}",
                         "path": str(path), "start": t, "end": t + d, "duration": d,
                         "text": "", "speaker": f"s{r}", "method": "bench", "language": "nl",
                         "session": f"rec{r:03d}"})
            t += d
            i += 1
    return pl.DataFrame(rows)


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bench_write(df: pl.DataFrame, out: Path, fmt: str) -> Timer:
    from corpus_tools.shards import write_shards

    with Timer() as t:
        write_shards(df, out, samples_per_shard=500, fmt=fmt, progress=False)
    return t


def bench_write_baseline(df: pl.DataFrame, out: Path, fmt: str) -> Timer:
    import webdataset as wds

    from corpus_tools.audio import encode_audio
    from corpus_tools.shards import cut_segment

    out.mkdir(parents=True, exist_ok=True)
    rows = df.sort("duration").to_dicts()
    with Timer() as t:
        for s in range(0, len(rows), 500):
            with wds.TarWriter(str(out / f"base.{s // 500:06d}.tar"), encoder=False) as w:
                for r in rows[s:s + 500]:
                    n = int(round(r["duration"] * 16000))
                    x = cut_segment(r["path"], r["start"], n)
                    w.write({"__key__": r["segment_id"], fmt: encode_audio(x, 16000, fmt),
                             "json": b"{}"})
    return t


def bench_read(shard_dir: Path) -> tuple[Timer, float, float]:
    from corpus_tools.data.stream import ShardBatchStream

    stream = ShardBatchStream(str(shard_dir), 150.0, infinite=False, seed=0)
    seconds = padded = 0.0
    with Timer() as t:
        for b in stream:
            seconds += b.seconds
            padded += b.padded_seconds
    return t, seconds, 1 - seconds / padded


def bench_read_baseline(shard_dir: Path, fmt: str) -> tuple[Timer, float]:
    import io

    import torch
    import webdataset as wds

    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                        empty_check=False).to_tuple(fmt)
    seconds = 0.0
    with Timer() as t:
        batch = []
        for (data,) in ds:
            x, _ = sf.read(io.BytesIO(data), dtype="float32")
            batch.append(x)
            if len(batch) == 8:
                longest = max(len(a) for a in batch)
                out = torch.zeros(len(batch), longest)
                for i, a in enumerate(batch):
                    out[i, : len(a)] = torch.from_numpy(a)
                seconds += sum(len(a) for a in batch) / 16000
                batch = []
        seconds += sum(len(a) for a in batch) / 16000
    return t, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=0.5, help="audio to shard (default 0.5 h)")
    ap.add_argument("--source", choices=("wav16", "flac44"), default="wav16",
                    help="recordings: 16 kHz wav (no resampling) or 44.1 kHz flac (resampled)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put temporary data")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=args.workdir))
    try:
        (work / "rec").mkdir()
        df = make_corpus(work / "rec", args.hours, args.source)
        audio_s = float(df["duration"].sum())
        print(f"corpus: {df.height} segments, {audio_s / 3600:.2f} h, source {args.source}")
        print(f"{'':26s} {'× real time/core (cpu)':>24s} {'wall':>10s}")
        for fmt in ("wav", "flac"):
            ours = bench_write(df, work / f"ours-{fmt}", fmt)
            base = bench_write_baseline(df, work / f"base-{fmt}", fmt)
            print(f"write {fmt:4s} corpus shard      {audio_s / ours.cpu:>20,.0f}×   "
                  f"{audio_s / ours.wall:>8,.0f}×")
            print(f"write {fmt:4s} wds.TarWriter     {audio_s / base.cpu:>20,.0f}×   "
                  f"{audio_s / base.wall:>8,.0f}×   ratio ours/base {base.cpu / ours.cpu:.2f}")
        print(f"{'':26s} {'s audio / s / core (cpu)':>24s} {'wall':>10s}")
        for fmt in ("wav", "flac"):
            shards = work / f"ours-{fmt}"
            read_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
            bench_read(shards)  # warm the page cache so both readers see the same
            ours, secs, pad = bench_read(shards)
            base, bsecs = bench_read_baseline(shards, fmt)
            assert abs(secs - audio_s) < 1.0 and abs(bsecs - audio_s) < 1.0
            print(f"read  {fmt:4s} ShardBatchStream  {secs / ours.cpu:>20,.0f}    "
                  f"{secs / ours.wall:>8,.0f}    padding {pad:.1%}, "
                  f"{read_bytes / 1e6 / ours.wall:,.0f} MB/s")
            print(f"read  {fmt:4s} wds + fixed 8     {bsecs / base.cpu:>20,.0f}    "
                  f"{bsecs / base.wall:>8,.0f}    ratio ours/base {base.cpu / ours.cpu:.2f}")
        print("targets: read ≥ 20,000 s/s/core (wav); write ≥ 500× real time/core")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
