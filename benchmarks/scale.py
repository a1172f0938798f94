"""Benchmark the scale-out backends on this machine: local, local ×2 processes, Ray ×1, Ray ×2.

    python benchmarks/scale.py [--stage sad|shard|both] [--minutes 6] [--workdir DIR] [--json OUT]

``sad`` — segmentation with the ``sad`` method (pyannote VAD, the cheapest real model; the
offline models come from ``corpus models prepare-offline``) over ``--minutes`` of broadcast-like
audio (``corpus_tools.samples``: Dutch TTS, the pyannote 2-speaker call, music, noise). Each
configuration starts from an empty stage cache, runs one torch thread per worker (on a
shared 2-core machine a second thread per process made pyannote 10-20× slower: the threads
wait for each other at every parallel region), and includes everything a user waits for
after start-up: worker processes/actors spawning, model loading, decoding, VAD, cache writes
(Ray's own ``ray.init`` is timed separately and left out). The single local process is the
baseline every ratio refers to, measured in the same run.

``shard`` — ``corpus shard`` of the resulting ``sad`` manifest (the mp3/mp4 recordings are decoded
once each and every segment is cut from that decode): local ``write_shards`` with 1 and 2 processes vs Ray tasks.

Throughput is audio seconds per wall-clock second (× real time). The machine is shared, so
wall-clock numbers move with other load; the ratios come from back-to-back runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(root: Path, minutes: float) -> tuple[Path, Path, float]:
    """Archive → ingested work dir; returns (workdir, models_dir, audio seconds)."""
    from typer.testing import CliRunner

    from corpus_tools.cli import app
    from corpus_tools.manifests import read_recordings
    from corpus_tools.models import prepare_offline
    from corpus_tools.samples import build_sample_archive

    models = root / "models"
    if not (models / ".done").exists():
        prepare_offline(models)
        (models / ".done").write_text("ok")
    n = max(2, round(minutes * 60 / 100))  # each broadcast is ~100 s
    arch = root / f"archive-{n}"
    if not (arch / "timelines.json").exists():
        build_sample_archive(arch, n_broadcasts=n)
    work = root / f"work-{n}"
    if not (work / "recordings.parquet").exists():
        res = CliRunner().invoke(app, ["ingest", str(arch), "-o", str(work)])
        assert res.exit_code == 0, res.output
    recs = read_recordings(work / "recordings.parquet")
    return work, models, float(recs["duration"].sum())


def fresh(work: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy(work / "recordings.parquet", dest / "recordings.parquet")
    return dest


def time_segment(work: Path, models: Path, backend: str, workers: int) -> float:
    """Wall seconds to fill the sad stage cache of ``work`` (models loaded inside)."""
    from corpus_tools.manifests import WorkDir
    from corpus_tools.parallel.segment import process_recordings
    from corpus_tools.segment import runner
    from corpus_tools.segment.backends import ModelSet, SegmentConfig

    cfg = SegmentConfig(models_dir=str(models), device="cpu")
    wd = WorkDir(work)
    recs = runner.ok_recordings(wd)
    t0 = time.perf_counter()
    if backend == "local" and workers == 1:
        import torch

        torch.set_num_threads(1)
        models_ = ModelSet(cfg)
        cache = runner.StageCache(wd, models_.stage_keys(["vad"]))
        for rec in recs:
            runner.process_recording(rec, ["vad"], cache, models_)
    else:
        for _ in process_recordings(recs, ["vad"], wd, cfg, backend=backend, workers=workers, threads=1):
            pass
    return time.perf_counter() - t0


def time_shard(work: Path, out: Path, backend: str, workers: int) -> float:
    from corpus_tools.manifests import WorkDir, read_segments
    from corpus_tools.parallel.shards import write_shards_ray
    from corpus_tools.shards import write_shards

    segs = read_segments(WorkDir(work).segments("sad"))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if backend == "ray":
        write_shards_ray(segs, out, workers=workers, samples_per_shard=8, progress=False)
    else:
        write_shards(segs, out, workers=workers, samples_per_shard=8, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("sad", "shard", "both"), default="sad")
    ap.add_argument("--minutes", type=float, default=6.0, help="audio to segment (~100 s per file)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs here between runs")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    work, models, audio_s = build(root, args.minutes)
    print(f"{audio_s / 60:.1f} min of audio in {work}; {os.cpu_count()} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f}")

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    print(f"ray.init (local, {os.cpu_count()} CPUs): {ray_init_s:.1f} s (not counted below)")

    configs = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]
    results: dict = {"audio_seconds": audio_s, "cpus": os.cpu_count(), "ray_init_s": ray_init_s}
    try:
        if args.stage in ("sad", "both"):
            rows = []
            for backend, n in configs:
                wall = time_segment(fresh(work, root / f"seg-{backend}-{n}"), models, backend, n)
                rows.append({"backend": backend, "workers": n, "wall_s": wall, "x_real_time": audio_s / wall})
                print(f"  sad  {backend:5s} ×{n}: {wall:7.1f} s  {audio_s / wall:6.1f}× real time", flush=True)
            results["sad"] = rows
            report("segment --method sad", rows)
        if args.stage in ("shard", "both"):
            src = root / "seg-local-1"
            if not (src / "segments" / "sad.parquet").exists():
                time_segment(fresh(work, src), models, "local", 1)
            from corpus_tools.manifests import WorkDir
            from corpus_tools.segment import postprocess as pp
            from corpus_tools.segment import runner
            from corpus_tools.segment.assemble import write_method
            from corpus_tools.segment.backends import SegmentConfig, resolve_stage_keys

            cfg = SegmentConfig(models_dir=str(models), device="cpu")
            wd = WorkDir(src)
            cache = runner.StageCache(wd, resolve_stage_keys(cfg, ["vad"]))
            written = write_method(wd, "sad", runner.ok_recordings(wd), cache, pp.load_phrases("nl", None), cfg,
                                   [str(f) for f in pp.phrase_files("nl")])
            seg_audio = written.drops["kept_seconds"]
            rows = []
            for backend, n in configs:
                wall = time_shard(src, root / f"shards-{backend}-{n}", backend, n)
                rows.append({"backend": backend, "workers": n, "wall_s": wall,
                             "x_real_time": seg_audio / wall})
                print(f"  shard {backend:5s} ×{n}: {wall:7.2f} s  {seg_audio / wall:7.1f}× real time", flush=True)
            results["shard"] = rows
            report(f"shard ({df.height} segments, {seg_audio / 60:.1f} min)", rows)
    finally:
        ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(title: str, rows: list[dict]) -> None:
    base = rows[0]["wall_s"]
    by = {(r["backend"], r["workers"]): r["wall_s"] for r in rows}
    print(f"\n{title}: throughput relative to one local process (higher is faster)")
    for r in rows:
        print(f"  {r['backend']:5s} ×{r['workers']}  {r['x_real_time']:8.1f}× real time   "
              f"{base / r['wall_s']:5.2f}× the local baseline")
    if ("ray", 1) in by and ("ray", 2) in by:
        print(f"  Ray scaling 1 → 2 workers: {by[('ray', 1)] / by[('ray', 2)]:.2f}×")
    if ("local", 1) in by and ("local", 2) in by:
        print(f"  local scaling 1 → 2 processes: {by[('local', 1)] / by[('local', 2)]:.2f}×")


if __name__ == "__main__":
    main()
