"""Benchmark the manifest steps at corpus scale: CPU time and peak memory per segment,
extrapolated to the thesis' full run (16,876,597 ``wx-diar-3s`` segments from 81 k hours).

    python benchmarks/scale_manifest.py [--recordings 150] [--steps segment,assemble,...]
        [--workers 1] [--row-group-rows 10000] [--workdir DIR --keep] [--models-dir DIR]

Builds a synthetic work directory with 2N recordings (``--recordings`` N) and one with the
first N of them (hard links): a ``recordings.parquet`` and the stage caches of
``wx-diar-3s`` (``vad``, ``wx-asr``, ``wx-align``, ``wx-diar``) in the exact JSON the stages
write, under the cache folders ``run_segment`` computes for a ``SegmentConfig`` with the
offline models of ``--models-dir`` (``corpus models prepare-offline --models-dir DIR``). A
recording is ~20 minutes of broadcast-like speech: 250 aligned sentences of 4-18 timed words,
speakers that change every other sentence, music stretches (some with words hallucinated over
them), the odd listed phrase; ``wx-diar-3s`` makes ~100 segments of it (17 s of audio per
segment, as the thesis' 81 k hours / 16.9 M segments).

Each step runs in a fresh process, at both sizes:

``segment``     ``corpus segment --method wx-diar-3s`` with every stage cached (``run_segment``:
                the cache check of every recording, the assembly, the RTTM and CTM files)
``assemble``    the manifest assembly alone (``segment.assemble.write_method``)
``stats``       ``corpus stats`` (``stats.method_stats``)
``plan``        ``corpus shard``'s plan (``shards.plan.plan_shards`` on the manifest)
``fingerprint`` the plan and its fingerprint (``plan_fingerprint``: every item's json made and
                hashed, as ``corpus shard`` does before it writes)
``verify``      ``corpus verify WORKDIR`` (``verify.verify_workdir``: the manifests, and every
                cache entry parsed)
``reader``      the reader's shard index (``data.tar_index.read_shard_records`` over every
                shard: headers and json) on shards of the plan whose audio members are 2-byte
                stubs, so that only what scales with the segment count is timed

and prints, per step, CPU seconds and peak resident MB at both sizes, the marginal rate
(segments per CPU second between N and 2N, so that imports and the models' fingerprints do
not count), the memory slope (MB per million segments; ~0: memory does not grow with the
corpus), the extrapolation to 16,876,597 segments and the cores 200 k segments/s would take.
The machine is shared: CPU seconds are the steadier figure. The default sizes (15 k and 30 k
segments) keep the run to ~3 minutes, most of it the ``segment`` step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FULL_RUN_SEGMENTS = 16_876_597
METHOD = "wx-diar-3s"
STAGES = ("vad", "wx-asr", "wx-align", "wx-diar")
STEPS = ("segment", "assemble", "stats", "plan", "fingerprint", "verify", "reader")
WORDS = ("de", "het", "een", "en", "van", "is", "dat", "niet", "op", "te", "zijn", "met", "voor",
         "er", "maar", "ook", "als", "aan", "dan", "nog", "wel", "naar", "bij", "uit", "kan",
         "gemeente", "vandaag", "Arnhem", "Nijmegen", "provincie", "wethouder", "zegt", "mensen",
         "Gelderland", "jaar", "nieuwe", "weg", "politie", "school", "ongeveer", "morgen")


def segment_config(models_dir: str):
    from corpus_tools.segment.backends import SegmentConfig

    return SegmentConfig(whisper_model="base", device="cpu", models_dir=models_dir)


# -- the synthetic work directory ------------------------------------------------------


def _words(rng: random.Random, t: float, n: int, speaker: str | None) -> tuple[list[dict], float]:
    """``n`` timed words from ``t``; returns them and where the last ends."""
    out = []
    for _ in range(n):
        start = round(t + rng.uniform(0.0, 0.12), 3)
        end = round(start + rng.uniform(0.12, 0.55), 3)
        w = {"word": rng.choice(WORDS), "start": start, "end": end, "score": round(rng.uniform(0.3, 1.0), 3)}
        if rng.random() < 0.01:  # an aligner that could not place a word
            w = {"word": w["word"], "start": None, "end": None, "score": None}
        else:
            t = end
        if speaker is not None:
            w["speaker"] = speaker
        out.append(w)
    return out, t


def synthetic_recording(seed: int, sentences: int = 250) -> dict[str, dict]:
    """The four stage outputs of one recording (``backends`` docstring formats) and its
    duration: speech regions with sentences, music gaps, speaker changes."""
    rng = random.Random(seed)
    regions, aligned, turns = [], [], []
    t, speaker, spk_start = rng.uniform(0.5, 3.0), "SPEAKER_00", None
    for i in range(sentences):
        if rng.random() < 0.04:  # music: no speech, sometimes hallucinated words over it
            gap = rng.uniform(15.0, 60.0)
            if rng.random() < 0.5:
                words, _ = _words(rng, t + 2.0, rng.randint(3, 8), speaker)
                aligned.append({"start": words[0]["start"] or t + 2.0, "end": t + gap - 1.0,
                                "text": " ".join(w["word"] for w in words), "speaker": speaker, "words": words})
            t += gap
        if rng.random() < 0.5 or spk_start is None:  # a new speaker turn
            if spk_start is not None:
                turns.append([round(spk_start, 3), round(t, 3), speaker])
            speaker, spk_start = f"SPEAKER_{rng.randint(0, 5):02d}", t
        n = 1 if rng.random() < 0.03 else rng.randint(4, 18)
        words, end = _words(rng, t, n, speaker)
        timed = [w for w in words if w["start"] is not None] or [{"start": t, "end": t + 0.5}]
        text = " ".join(w["word"] for w in words) + ("." if rng.random() < 0.7 else "")
        if n == 1 and rng.random() < 0.5:
            text, words[0]["word"] = "Muziek", "Muziek"  # a listed phrase
        aligned.append({"start": timed[0]["start"], "end": max(w["end"] for w in timed), "text": text,
                        "speaker": speaker, "words": words})
        regions.append([round(t - rng.uniform(0.0, 0.3), 3), round(end + rng.uniform(0.0, 0.3), 3)])
        t = end + rng.uniform(0.15, 2.5)
    turns.append([round(spk_start, 3), round(t, 3), speaker])
    duration = round(t + rng.uniform(1.0, 30.0), 3)
    chunks, cur = [], None
    for s in aligned:  # wx-asr: the sentences in chunks of up to 30 s
        if cur is not None and s["end"] - cur["start"] <= 30.0:
            cur["end"], cur["text"] = s["end"], f"{cur['text']} {s['text']}"
        else:
            cur = {"start": s["start"], "end": s["end"], "text": s["text"]}
            chunks.append(cur)
    plain = [{k: v for k, v in s.items() if k != "speaker"} for s in aligned]
    for s in plain:
        s["words"] = [{k: v for k, v in w.items() if k != "speaker"} for w in s["words"]]
    return {"duration": duration, "vad": {"regions": regions},
            "wx-asr": {"segments": chunks, "language": "nl"}, "wx-align": {"segments": plain},
            "wx-diar": {"segments": aligned, "turns": turns}}


def build_workdir(root: Path, n: int, models_dir: str, like: Path | None = None) -> Path:
    """A work directory of ``n`` ok recordings with every stage of ``wx-diar-3s`` cached;
    with ``like`` (a larger one built before), its first ``n`` recordings, hard-linked."""
    import polars as pl

    from corpus_tools.manifests import RECORDINGS_SCHEMA, WorkDir, read_recordings, write_recordings
    from corpus_tools.segment.backends import resolve_stage_keys
    from corpus_tools.segment.runner import StageCache

    if (root / ".built").exists():
        return root
    wd = WorkDir(root)
    cache = StageCache(wd, resolve_stage_keys(segment_config(models_dir), list(STAGES)))
    if like is not None:
        src = StageCache(WorkDir(like), cache.keys)
        recs = read_recordings(WorkDir(like).recordings).sort("recording_id").head(n)
        for stage in STAGES:
            cache.dir(stage).mkdir(parents=True, exist_ok=True)
            os.link(src.dir(stage) / "settings.json", cache.dir(stage) / "settings.json")
            for rid in recs["recording_id"]:
                os.link(src.path(stage, rid), cache.path(stage, rid))
        write_recordings(recs, wd.recordings)
        (root / ".built").write_text("ok")
        return root
    for stage in STAGES:
        cache.put(stage, "-", {})  # writes the folder's settings.json as the runner does
        cache.path(stage, "-").unlink()
    rows = []
    for i in range(n):
        rid = f"bc{i:06d}"
        rec = synthetic_recording(i)
        for stage in STAGES:  # StageCache.put's bytes, without an fsync per file
            cache.path(stage, rid).write_text(json.dumps(rec[stage], ensure_ascii=False), encoding="utf-8")
        rows.append({"recording_id": rid, "path": f"/archive/omroep-gelderland/{rid}.mp4", "status": "ok",
                     "reason": None, "duration": rec["duration"], "sample_rate": 48000, "channels": 2,
                     "codec": "aac", "container": "mov,mp4,m4a,3gp,3g2,mj2", "size_bytes": 123_456_789})
    write_recordings(pl.DataFrame(rows, schema=RECORDINGS_SCHEMA), wd.recordings)
    (root / ".built").write_text("ok")
    return root


def build_shards(wd_root: Path, out: Path, per_shard: int = 5000) -> int:
    """Shards of the plan of the workdir's manifest, with the real json members and 2-byte
    audio stubs (the reader's index reads headers and json only); returns the sample count."""
    import polars as pl

    from corpus_tools.manifests import WorkDir
    from corpus_tools.shards.plan import plan_shards
    from corpus_tools.shards.tar_writer import json_bytes

    if (out / ".built").exists():
        return int((out / ".built").read_text())
    out.mkdir(parents=True, exist_ok=True)
    specs = plan_shards(pl.read_parquet(WorkDir(wd_root).segments(METHOD)), samples_per_shard=per_shard)
    stub = b"\0\0"
    n = 0
    for spec in specs:
        with tarfile.open(out / spec.name, "w", format=tarfile.USTAR_FORMAT) as tf:
            for it in spec.items:
                for name, data in ((f"{it['key']}.json", json_bytes(it["meta"])), (f"{it['key']}.wav", stub)):
                    ti = tarfile.TarInfo(name)
                    ti.size, ti.mtime = len(data), 1672531200
                    tf.addfile(ti, _Bytes(data))
                n += 1
    (out / ".built").write_text(str(n))
    return n


class _Bytes:
    """A read-once file object over bytes (``tarfile.addfile`` wants one)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, size: int = -1) -> bytes:
        out, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return out


# -- one step, in a fresh process ------------------------------------------------------


def run_step(step: str, workdir: Path, models_dir: str, shards: Path, workers: int = 1,
             row_group_rows: int = 100_000) -> dict:
    """Run ``step`` on ``workdir``; returns what it counted (segments). ``workers``: the
    processes of the assembly and of verify's cache parsing (1: the per-core figures);
    ``row_group_rows``: the assembly's row groups."""
    from corpus_tools.manifests import WorkDir

    wd = WorkDir(workdir)
    cfg = segment_config(models_dir)
    if step == "segment":
        from corpus_tools.segment.run import SegmentArgs, run_segment

        res = run_segment(SegmentArgs(workdir, methods=[METHOD], config=cfg))
        return {"segments": res.outputs[0].segments}
    if step == "assemble":
        from corpus_tools.segment import postprocess as pp
        from corpus_tools.segment import runner
        from corpus_tools.segment.assemble import write_method
        from corpus_tools.segment.backends import resolve_stage_keys

        cache = runner.StageCache(wd, resolve_stage_keys(cfg, list(STAGES)))
        out = write_method(wd, METHOD, runner.ok_recordings(wd), cache, pp.load_phrases("nl"), cfg, [],
                           workers=workers, row_group_rows=row_group_rows)
        return {"segments": out.segments}
    if step == "stats":
        from corpus_tools.stats import method_stats

        return {"segments": int(method_stats(wd, [METHOD])["segments"][0])}
    if step == "plan":
        import polars as pl

        from corpus_tools.shards.plan import plan_shards

        specs = plan_shards(pl.read_parquet(wd.segments(METHOD)), samples_per_shard=5000)
        return {"segments": sum(s.count for s in specs)}
    if step == "fingerprint":  # the plan and its fingerprint: what `corpus shard` computes before writing
        import polars as pl

        from corpus_tools.shards.plan import plan_fingerprint, plan_shards

        specs = plan_shards(pl.read_parquet(wd.segments(METHOD)), samples_per_shard=5000)
        plan_fingerprint(specs, "wav")
        return {"segments": sum(s.count for s in specs)}
    if step == "verify":
        from corpus_tools.verify import verify_workdir

        rep = verify_workdir(workdir, methods=[METHOD], workers=workers)
        assert rep.ok, rep.problems[:3]
        return {"segments": rep.totals[f"{METHOD}_segments"]}
    if step == "reader":
        from corpus_tools.data.tar_index import list_shards, read_shard_records

        frames = n = 0
        for path in list_shards(shards):
            for rec in read_shard_records(path):
                frames += rec.num_frames
                n += 1
        return {"segments": n}
    raise KeyError(step)


def child(args) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    out = run_step(args.child, Path(args.workdir_step), args.models_dir, Path(args.shards), args.workers,
                   args.row_group_rows)
    out.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, peak_mb=peak_rss_mb())
    print(json.dumps(out))


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM``, not ``ru_maxrss``: Linux keeps the
    latter across ``exec``, so a child would report its parent's peak when that is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(step: str, workdir: Path, models_dir: str, shards: Path, args) -> dict:
    """Run one step in a fresh interpreter (the interpreter's start is not timed; the step's
    imports are)."""
    cmd = [sys.executable, __file__, "--child", step, "--workdir-step", str(workdir),
           "--models-dir", models_dir, "--shards", str(shards), "--workers", str(args.workers),
           "--row-group-rows", str(args.row_group_rows)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"step {step} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------------


def report(results: dict[str, list[dict]]) -> None:
    """Per step: both sizes, the marginal rate (segments per CPU second between N and 2N, so
    that start-up such as imports and model fingerprints does not count), the memory slope and
    the extrapolation to the full run."""
    print(f"\n{'step':11s} {'N seg':>7s} {'cpu s':>6s} {'MB':>5s} | {'2N seg':>7s} {'cpu s':>6s} {'MB':>5s} |"
          f" {'seg/s':>8s} {'MB/Mseg':>7s} | {'17M cpu':>8s} {'17M MB':>7s} {'cores@200k':>10s}")
    for step, runs in results.items():
        if len(runs) < 2:
            continue
        a, b = runs
        extra = max(1, b["segments"] - a["segments"])
        if b["cpu"] - a["cpu"] > 0.1 * b["cpu"]:  # a marginal cost that stands out from the noise
            per_seg, bound = (b["cpu"] - a["cpu"]) / extra, " "
        else:  # too small to measure: the 2N run's total is an upper bound
            per_seg, bound = b["cpu"] / b["segments"], ">"
        fixed = max(0.0, a["cpu"] - per_seg * a["segments"])
        slope = (b["peak_mb"] - a["peak_mb"]) / extra * 1e6
        full_cpu = fixed + per_seg * FULL_RUN_SEGMENTS
        full_mb = b["peak_mb"] + max(0.0, slope) * (FULL_RUN_SEGMENTS - b["segments"]) / 1e6
        print(f"{step:11s} {a['segments']:7d} {a['cpu']:6.1f} {a['peak_mb']:5.0f} | {b['segments']:7d} {b['cpu']:6.1f}"
              f" {b['peak_mb']:5.0f} | {bound}{1 / per_seg:8,.0f} {slope:7.0f} | {full_cpu / 60:6.1f} m"
              f" {full_mb:7.0f} {200_000 * per_seg:10.1f}")
    print(f"\nseg/s: marginal segments per CPU second (one core) between N and 2N ('>': too fast to tell "
          f"from start-up, the 2N total); MB/Mseg: peak-memory "
          f"growth per million segments (~0: flat); 17M: CPU minutes and peak MB extrapolated to "
          f"{FULL_RUN_SEGMENTS:,} segments; cores@200k: cores needed for 200 k segments/s at that rate.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", type=int, default=150,
                    help="N: recordings of the smaller work directory (~100 segments each)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    ap.add_argument("--models-dir", default=os.environ.get("CORPUS_MODELS", "/tmp/demo-out/models"))
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--workers", type=int, default=1,
                    help="processes of the assembly and of verify's cache parsing (default 1: per-core figures)")
    ap.add_argument("--row-group-rows", type=int, default=10_000,
                    help="the assemble step's row groups (default 10,000: several at both sizes, so that the "
                         "memory slope is that of a long run; `corpus segment` writes 100,000)")
    ap.add_argument("--keep", action="store_true", help="keep the built work directories")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir-step", help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="scale-manifest-"))
    steps = [s for s in args.steps.split(",") if s]
    results: dict[str, list[dict]] = {s: [] for s in steps}
    try:
        t0 = time.perf_counter()
        big = build_workdir(root / f"work-{2 * args.recordings}", 2 * args.recordings, args.models_dir)
        small = build_workdir(root / f"work-{args.recordings}", args.recordings, args.models_dir, like=big)
        print(f"built {2 * args.recordings} + {args.recordings} recordings in {time.perf_counter() - t0:.1f} s",
              flush=True)
        for wd in (small, big):
            shards = root / f"shards-{wd.name}"
            for step in steps:
                if step == "reader":
                    t0 = time.perf_counter()
                    build_shards(wd, shards)
                    print(f"  built shards in {time.perf_counter() - t0:.1f} s", flush=True)
                r = measure(step, wd, args.models_dir, shards, args)
                results[step].append(r)
                print(f"  {wd.name:11s} {step:11s} {r['segments']:8d} segments  {r['wall']:6.2f} s wall  "
                      f"{r['cpu']:6.2f} s cpu  {r['peak_mb']:6.0f} MB peak", flush=True)
        report(results)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
