"""Throughput of the data-quality simulation: seconds of audio degraded per second per core.

Runs the very ``Simulator`` the trainer uses online on LibriSpeech-like batches (150 s
budget, utterances 2–20 s cut from real speech) in one process pinned to one thread, for
every condition, and a plain copy of the same batches as the baseline in the same run.

    .venv/bin/python benchmarks/simulate.py                 # 1 h of audio per condition
    .venv/bin/python benchmarks/simulate.py --hours 0.2 --percent 10 33 50 --json out.json

Numbers reported per condition:

* ``audio s/s`` — seconds of batch audio passed through the transform per wall second
  (one core): what bounds a data loader worker; target ≥ 5,000 for the mixing conditions;
* ``degraded s/s`` — seconds of the utterances that were modified, per second (≈ X % of
  the above; all of it for concat, where partners come from the batch or a speech pool
  read from disk);
* ``vs copy`` — the transform's time relative to copying the batch's arrays.

Interferer clips are 16 kHz wav files on local disk, fewer than the LRU cache holds
(``--pool``), so after warm-up the numbers measure mixing, not decoding; ``--cold`` sets the
cache to 0 and reads every clip from disk (what a pool far larger than the cache costs).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy / BLAS single threaded
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus_tools.audio import load_audio, write_audio  # noqa: E402
from corpus_tools.data.rng import batch_rng  # noqa: E402
from corpus_tools.simulate import Simulator  # noqa: E402

SR = 16_000
SPEECH = ROOT / ".venv/lib/python3.11/site-packages/pyannote/audio/sample/sample.wav"
CONDITIONS = ["2spk-mix-{x}", "mix-noise-{x}", "mix-music-{x}", "mix-instr-{x}", "mix-vocal-{x}",
              "sub-noise-{x}", "sub-music-{x}", "1spk-concat", "2spk-concat"]


@dataclass
class Utt:  # the reader's Utterance shape (no torch import needed here)
    key: str
    audio: np.ndarray
    meta: dict


def make_batches(total_seconds: float, batch_seconds: float, seed: int = 0) -> list[list[Utt]]:
    """LibriSpeech-like batches: lengths 2–20 s (mean ≈ 12 s), 40 speakers, 2 chapters each."""
    rng = np.random.default_rng(seed)
    speech = load_audio(SPEECH) if SPEECH.exists() else \
        (0.1 * rng.standard_normal(30 * SR)).astype(np.float32)
    source = np.tile(speech, 8)  # 4 min to cut from
    batches, done, k = [], 0.0, 0
    while done < total_seconds:
        target = float(rng.uniform(4.0, 20.0))
        n = max(1, int(batch_seconds // target))  # similar lengths per batch, as the batcher makes
        batch = []
        for _ in range(n):
            length = int(min(20.0, max(2.0, target + rng.uniform(-1.5, 1.5))) * SR)
            start = int(rng.integers(0, source.size - length))
            spk = int(rng.integers(0, 40))
            batch.append(Utt(f"u{k}", source[start:start + length].copy(),
                             {"id": f"u{k}", "speaker": str(spk),
                              "session": f"{spk}-{int(rng.integers(0, 2))}", "transcript": ""}))
            k += 1
            done += length / SR
        batches.append(batch)
    return batches


def make_sources(folder: Path, pool: int, seed: int = 1) -> dict:
    """Noise / music clip manifests and a stems folder of 16 kHz wav files (25–30 s each)."""
    import polars as pl

    rng = np.random.default_rng(seed)
    rows = {"noise": [], "music": []}
    stems = []
    for i in range(pool):
        for kind in ("noise", "music"):
            dur = float(rng.uniform(25.0, 30.0))
            x = (0.05 * rng.standard_normal(int(dur * SR))).astype(np.float32)
            p = write_audio(folder / kind / f"{kind}{i}.wav", x)
            rows[kind].append(dict(segment_id=f"{kind}{i}", path=str(p), start=0.0, end=dur,
                                   duration=dur))
        stems.append(dict(clip_id=f"music{i}", vocal_path=f"music/music{i}.wav",
                          instrumental_path=f"music/music{i}.wav", vocal_speech_seconds=10.0,
                          usable_vocal=True))
    # the speech partner pool (concat conditions): 40 speakers × 2 chapters × 2 utterances
    speech = load_audio(SPEECH) if SPEECH.exists() else \
        (0.1 * rng.standard_normal(30 * SR)).astype(np.float32)
    rows["speech"] = []
    for spk in range(40):
        for chap in range(2):
            for j in range(2):
                start = int(rng.integers(0, speech.size - 12 * SR))
                p = write_audio(folder / "speech" / f"{spk}-{chap}-{j}.wav",
                                speech[start:start + 12 * SR])
                rows["speech"].append(dict(segment_id=f"{spk}-{chap}-{j}", path=str(p),
                                           start=0.0, end=12.0, duration=12.0, speaker=str(spk),
                                           session=f"{spk}-{chap}"))
    out = {}
    for kind, r in rows.items():
        out[kind] = folder / f"{kind}.parquet"
        pl.DataFrame(r).write_parquet(out[kind])
    pl.DataFrame(stems).write_parquet(folder / "stems.parquet")
    out["stems"] = folder
    return out


def plain_copy(batch: list[Utt]) -> list[Utt]:
    return [Utt(u.key, u.audio.copy(), dict(u.meta)) for u in batch]


def time_it(fn, batches, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i, b in enumerate(batches):
            fn(b, i)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=1.0, help="audio per condition (default 1 h)")
    ap.add_argument("--batch-seconds", type=float, default=150.0)
    ap.add_argument("--percent", type=int, nargs="+", default=[10, 33, 50])
    ap.add_argument("--pool", type=int, default=16, help="clips per interferer pool")
    ap.add_argument("--cold", action="store_true", help="no clip cache: read every clip from disk")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    batches = make_batches(args.hours * 3600, args.batch_seconds)
    seconds = sum(u.audio.size for b in batches for u in b) / SR
    copy_t = time_it(lambda b, i: plain_copy(b), batches, repeats=3)
    copy_rate = seconds / copy_t
    results = {"machine": platform.processor() or platform.machine(), "cores": 1,
               "audio_seconds": round(seconds, 1), "batches": len(batches),
               "batch_seconds": args.batch_seconds, "cold": args.cold,
               "copy_audio_s_per_s": round(copy_rate), "conditions": []}
    print(f"{len(batches)} batches, {seconds / 3600:.2f} h per condition, 1 core; "
          f"plain copy: {copy_rate:,.0f} s/s")
    print(f"{'condition':16s} {'audio s/s':>11s} {'degraded s/s':>13s} {'vs copy':>8s}")
    by_growth = {1.0: batches}
    with tempfile.TemporaryDirectory() as tmp:
        src = make_sources(Path(tmp), args.pool)
        names = []
        for c in CONDITIONS:
            names.extend([c.format(x=x) for x in args.percent] if "{x}" in c else [c])
        for name in names:
            sim = Simulator(name, noise=src["noise"], music=src["music"], stems=src["stems"],
                            source=src["speech"], cache_size=0 if args.cold else 4 * args.pool,
                            batch_seconds=args.batch_seconds)
            growth = sim.length_growth  # concat: the stream forms batches on half the budget
            if growth not in by_growth:
                by_growth[growth] = make_batches(args.hours * 3600, args.batch_seconds / growth)
            batches = by_growth[growth]
            seconds = sum(u.audio.size for b in batches for u in b) / SR
            degraded = [0.0]

            def step(b, i, sim=sim, degraded=degraded):
                out = sim(b, batch_rng(0, i))
                degraded[0] += sum(u.audio.size for u, v in zip(b, out)
                                   if v.meta["simulation"]["modified"])

            if not args.cold:  # warm the clip cache so the timing is the mixing itself
                for i, b in enumerate(batches[:50]):
                    sim(b, batch_rng(0, i))
            degraded[0] = 0.0
            t = time_it(step, batches)
            rate = seconds / t
            row = {"condition": name, "audio_s_per_s": round(rate),
                   "degraded_s_per_s": round(degraded[0] / SR / t),
                   "time_vs_copy": round(t / copy_t, 2)}
            results["conditions"].append(row)
            print(f"{name:16s} {rate:11,.0f} {row['degraded_s_per_s']:13,.0f} "
                  f"{row['time_vs_copy']:7.1f}×")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
