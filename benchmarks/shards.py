"""Benchmark shard writing and reading (wav vs flac), against baselines run alongside.

    python benchmarks/shards.py [--hours 0.5] [--source wav16|flac44|mp3] [--workdir DIR]

Measures, in one process on one core (torch/BLAS threads pinned to 1):

* write: ``corpus_tools.shards.write_shards`` — cut segments from recordings, resample to
  16 kHz, encode, tar, hash — in × real time per core (audio seconds / CPU seconds).
  Baseline for wav/flac sources: the same cutting and encoding written with
  ``webdataset.TarWriter``. For ``--source mp3`` (96 kbps 44.1 kHz stereo, as a broadcast
  archive), the baseline is the per-segment path (``write_one_shard`` fed by ``cut_segment``:
  one ffmpeg accurate-seek decode per segment, the writer before each recording was decoded
  once), and the run also prints the whole-file decode alone (torchcodec through
  ``load_audio`` and the ffmpeg CLI; the floor of the write path), the write path with its
  decodes done beforehand (what it costs besides decoding) and how far the written audio
  lies from the per-segment decode.
* read: ``corpus_tools.data.stream.ShardBatchStream`` — tar headers + json, shuffle buffer,
  duration batching, decode, zero-padded batch tensors — in seconds of audio per second
  per core. Baseline: ``webdataset.WebDataset`` + soundfile decode + fixed 8-utterance
  padded batches (no duration batching).

Targets: read ≥ 20,000 s audio/s/core for wav; write ≥ 500× real time/core (mp3 sources
included). Numbers are CPU-time based (``os.times``: this process and the ffmpeg processes it
waited for) so that other load on the machine does not distort them; wall-clock figures are
printed next to them.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl
import soundfile as sf


SOURCES = {"wav16": (16000, "wav"), "flac44": (44100, "flac"), "mp3": (44100, "mp3")}


def write_recording(path: Path, x: np.ndarray, sr: int) -> None:
    """``x`` as ``path``; an mp3 is encoded from a stereo wav at 96 kbps by the ffmpeg CLI."""
    if path.suffix != ".mp3":
        sf.write(path, x, sr, subtype="PCM_16")
        return
    wav = path.with_suffix(".src.wav")
    sf.write(wav, np.stack([x, 0.7 * x + 0.03 * np.roll(x, 331)], axis=1), sr, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-b:a", "96k",
                    str(path)], check=True)
    wav.unlink()


def make_corpus(root: Path, hours: float, source: str, seed: int = 0) -> pl.DataFrame:
    """Five-minute recordings cut into LibriSpeech-like segments (gamma, 2–30 s)."""
    rng = np.random.default_rng(seed)
    sr, ext = SOURCES[source]
    rec_seconds = 300.0
    rows = []
    for r in range(max(1, int(np.ceil(hours * 3600 / rec_seconds)))):
        n = int(rec_seconds * sr)
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        path = root / f"rec{r:03d}.{ext}"
        write_recording(path, x, sr)
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


def cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (the ffmpeg CLI runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def bench_write(df: pl.DataFrame, out: Path, fmt: str, samples_per_shard: int = 500) -> Timer:
    from corpus_tools.shards import write_shards

    with Timer() as t:
        write_shards(df, out, samples_per_shard=samples_per_shard, fmt=fmt, progress=False)
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


def bench_write_per_segment(df: pl.DataFrame, out: Path, fmt: str, samples_per_shard: int) -> Timer:
    """The writer before decode-once: every planned shard from ``write_one_shard`` fed one
    ``cut_segment`` per segment (a ranged decode; for mp3 one ffmpeg run with accurate seek)."""
    from corpus_tools.audio import encode_audio
    from corpus_tools.shards import cut_segment, plan_shards, write_one_shard

    with Timer() as t:
        for s in plan_shards(df, samples_per_shard=samples_per_shard):
            write_one_shard(out / s.name, ((it["key"], encode_audio(
                cut_segment(it["path"], it["start"], it["num_frames"]), 16000, fmt), it["meta"])
                for it in s.items), presorted=True)
    return t


def bench_decode(paths: list[str]) -> tuple[Timer, Timer]:
    """Whole-file decodes to 16 kHz mono: ``load_audio`` (torchcodec, what the writer and
    the segment stage use) and the ffmpeg CLI (``-ac 1 -ar 16000 -f f32le``)."""
    from corpus_tools.audio import _load_ffmpeg_cli, load_audio

    load_audio(paths[0])  # load torchcodec's FFmpeg libraries outside the timing
    with Timer() as tc:
        for p in paths:
            load_audio(p)
    with Timer() as cli:
        for p in paths:
            _load_ffmpeg_cli(Path(p), 0.0, None, 16000)
    return tc, cli


def bench_write_predecoded(df: pl.DataFrame, out: Path, fmt: str, samples_per_shard: int) -> Timer:
    """``corpus shard`` with every whole-file decode done beforehand (untimed): what the
    write path costs besides the decode."""
    import corpus_tools.shards.write as write

    decoded = {p: write.load_audio(p) for p in set(df["path"])}
    load = write.load_audio
    write.load_audio = lambda path, *a, **k: decoded[path] if not (a or k) else load(path, *a, **k)
    try:
        return bench_write(df, out, fmt, samples_per_shard)
    finally:
        write.load_audio = load


def audio_members(shard_dir: Path) -> dict[str, np.ndarray]:
    """Every audio member of a shard folder, as int16 samples, by key."""
    out = {}
    for p in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(p) as tf:
            for m in tf:
                if not m.name.endswith(".json"):
                    x, _ = sf.read(io.BytesIO(tf.extractfile(m).read()), dtype="int16")
                    out[m.name.rsplit(".", 1)[0]] = x
    return out


def audio_difference(a: Path, b: Path, head_s: float = 0.05) -> dict:
    """How the audio of two shard folders with the same keys and lengths differs (full scale
    1.0): how many utterances differ at all, the max and RMS difference, and the max after
    each utterance's first ``head_s`` seconds (where a decoder started at the segment warms up)."""
    xa, xb = audio_members(a), audio_members(b)
    assert xa.keys() == xb.keys()
    head = int(head_s * 16000)
    worst = body = differ = n = 0
    sq = 0.0
    for k in xa:
        d = np.abs(xa[k].astype(np.int32) - xb[k].astype(np.int32))
        worst, body = max(worst, int(d.max(initial=0))), max(body, int(d[head:].max(initial=0)))
        sq, n, differ = sq + float((d.astype(np.float64) ** 2).sum()), n + d.size, differ + bool(d.any())
    return {"differ": differ, "max": worst / 32768, "rms": (sq / max(n, 1)) ** 0.5 / 32768,
            "max_after_head": body / 32768}


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


def row(label: str, audio_s: float, t: Timer, note: str = "") -> None:
    print(f"{label:26s} {audio_s / t.cpu:>20,.0f}×   {audio_s / t.wall:>8,.0f}×   {note}".rstrip())


def write_soundfile(df: pl.DataFrame, work: Path, audio_s: float) -> None:
    """wav/flac sources: ``corpus shard`` against ``webdataset.TarWriter``, per format."""
    for fmt in ("wav", "flac"):
        ours = bench_write(df, work / f"ours-{fmt}", fmt)
        base = bench_write_baseline(df, work / f"base-{fmt}", fmt)
        row(f"write {fmt:4s} corpus shard", audio_s, ours)
        row(f"write {fmt:4s} wds.TarWriter", audio_s, base, f"ratio ours/base {base.cpu / ours.cpu:.2f}")


def write_mp3(df: pl.DataFrame, work: Path, audio_s: float) -> None:
    """mp3 sources: the decode-once writer against the per-segment writer, per format, the
    whole-file decode alone, and the audio difference between the two writers (their json
    members and shard layout are the same)."""
    rec_s = 300.0 * df["recording_id"].n_unique()
    tc, cli = bench_decode(sorted(set(df["path"])))
    row("decode whole (torchcodec)", rec_s, tc, "load_audio(path): the write path's decode")
    row("decode whole (ffmpeg CLI)", rec_s, cli, f"torchcodec/CLI speed {cli.cpu / tc.cpu:.2f}")
    sps = 50  # several length-sorted shards, each recording spread over them
    for fmt in ("wav", "flac"):
        ours = bench_write(df, work / f"ours-{fmt}", fmt, sps)
        base = bench_write_per_segment(df, work / f"seg-{fmt}", fmt, sps)
        row(f"write {fmt:4s} corpus shard", audio_s, ours)
        row(f"write {fmt:4s} per segment", audio_s, base, f"ratio ours/base {base.cpu / ours.cpu:.2f}")
    rest = bench_write_predecoded(df, work / "predecoded", "wav", sps)
    row("write wav  minus decode", audio_s, rest, "the same, decodes done beforehand")
    d = audio_difference(work / "ours-wav", work / "seg-wav")
    print(f"audio, decode-once vs per-segment: {d['differ']} of {df.height} utterances differ; "
          f"max |Δ| {d['max']:.4f}, {d['max_after_head']:.4f} after each one's first 50 ms; "
          f"RMS Δ {d['rms']:.5f} (full scale 1; signal RMS ≈ 0.1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=0.5, help="audio to shard (default 0.5 h)")
    ap.add_argument("--source", choices=tuple(SOURCES), default="wav16",
                    help="recordings: 16 kHz wav (no resampling), 44.1 kHz flac (resampled) or "
                         "96 kbps 44.1 kHz stereo mp3 (decoded once per recording)")
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
        if args.source == "mp3":
            write_mp3(df, work, audio_s)
        else:
            write_soundfile(df, work, audio_s)
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
