"""Segmentation speed against the libraries it wraps, measured in the same run.

    python benchmarks/segment.py [--audio FILE] [--device cpu] [--whisper-model base]
                                 [--beam-size 5] [--batch-size 16] [--threads 2] [--repeats 1]
                                 [--no-cold] [--with-all]

On one broadcast (default: ~172 s built from the bundled sample material: Dutch TTS, the
pyannote 2-speaker call, music, noise), with every model loaded before timing on both sides:

=============  ==========================================  ===================================
ours           anchor                                      what the ratio says
=============  ==========================================  ===================================
``sad``        pyannote VAD (WhisperX's model) alone       our VAD stage vs the bare model
``w-raw``      faster-whisper ``transcribe`` (same beam)   the w-* pass, word timing included
``wx-asr``     WhisperX ``transcribe``                     WhisperX's stage 1 in our stage
``wx-diar-3s`` WhisperX ``transcribe``                     the whole chain (VAD + ASR + word
                                                           alignment + diarization) vs ASR alone
=============  ==========================================  ===================================

Ratios are anchor time / our time (> 1: we are faster). Each of our stages runs as
``corpus segment`` runs it (``runner.run_stage`` inside ``ModelSet.recording``, so the chain
shares VAD scores and encoder outputs). Both Whisper decoders are seeded identically, so the
temperature fallback (which re-decodes a window and dominates the variance) happens alike.

``--cold`` (default on): whole processes, back to back, as a user runs them:
``corpus segment --method wx-diar-3s`` on a fresh work dir vs a Python process that imports
WhisperX, loads its model and transcribes the same file (target: ours ≤ 1.5× that).
``--with-all``: ``--method all`` from scratch vs one ASR pass (w-raw), through the CLI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WHISPERX_ALONE = """
import sys, time, whisperx
t0 = time.perf_counter()
model = whisperx.load_model(sys.argv[1], sys.argv[2], compute_type=sys.argv[3], language="nl",
                            asr_options={"beam_size": int(sys.argv[5]), "best_of": int(sys.argv[5])})
audio = whisperx.load_audio(sys.argv[4])
model.transcribe(audio, batch_size=int(sys.argv[6]), language="nl")
"""


def build_broadcast(dest: Path, seconds: float = 172.0) -> Path:
    """Two sample broadcasts back to back, cut to ``seconds``."""
    import numpy as np
    import soundfile as sf

    from corpus_tools.audio import SAMPLE_RATE, load_audio
    from corpus_tools.samples import build_broadcast as one

    parts = []
    for seed in (0, 1):
        one(dest.with_name(f"part{seed}.wav"), seed=seed)
        parts.append(load_audio(dest.with_name(f"part{seed}.wav")))
    sf.write(dest, np.concatenate(parts)[: int(seconds * SAMPLE_RATE)], SAMPLE_RATE)
    return dest


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best of ``repeats`` wall-clock runs (the machine is shared: the minimum is the least
    disturbed) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def warm_comparison(audio_path: Path, args) -> list[tuple[str, float, str, float]]:
    import ctranslate2
    import torch
    import whisperx
    from faster_whisper import WhisperModel
    from whisperx.vads.pyannote import load_vad_model

    from corpus_tools.audio import SAMPLE_RATE, load_audio
    from corpus_tools.segment import backends as be

    torch.set_num_threads(args.threads)
    audio = load_audio(audio_path)
    cfg = be.SegmentConfig(whisper_model=args.whisper_model, models_dir=str(args.models_dir),
                           device=args.device, beam_size=args.beam_size, batch_size=args.batch_size,
                           compute_type=args.compute_type)
    ours = be.ModelSet(cfg)
    ct2_dir = ours.whisper_ct2_path()
    compute_type = cfg.resolved_compute_type()

    # anchors, loaded as their READMEs load them
    fw = WhisperModel(ct2_dir, device=cfg.resolved_device(), compute_type=compute_type, cpu_threads=args.threads)
    wx = whisperx.load_model(ct2_dir, cfg.resolved_device(), compute_type=compute_type, language=cfg.language,
                             asr_options={"beam_size": args.beam_size, "best_of": args.beam_size},
                             threads=args.threads)
    vad = load_vad_model(torch.device(cfg.resolved_device()), model_fp=ours.vad_path())
    waveform = {"waveform": torch.from_numpy(audio).unsqueeze(0), "sample_rate": SAMPLE_RATE}

    def anchor_fw():
        ctranslate2.set_random_seed(be.DECODING_SEED)
        segs, _ = fw.transcribe(audio, language=cfg.language, beam_size=args.beam_size, vad_filter=False)
        return list(segs)

    def chain(stages):
        def run():
            out = {}
            cache = _DictCache(out)
            with ours.recording(audio):
                for stage in stages:
                    out[stage] = _run_stage(stage, ours, audio, cache)
            return out
        return run

    pairs = [
        ("sad", chain(["vad"]), "pyannote VAD", lambda: vad(waveform)),
        ("w-raw", chain(["whisper"]), "faster-whisper transcribe", anchor_fw),
        ("wx-asr", chain(["wx-asr"]), "WhisperX transcribe",
         lambda: wx.transcribe(audio, batch_size=args.batch_size, language=cfg.language)),
        ("wx-diar-3s", chain(["vad", "wx-asr", "wx-align", "wx-diar"]), "WhisperX transcribe",
         lambda: wx.transcribe(audio, batch_size=args.batch_size, language=cfg.language)),
    ]
    # warm every model on both sides on the first 30 s (loading, first-call allocations)
    full, audio = audio, audio[: 30 * SAMPLE_RATE].copy()
    waveform["waveform"] = torch.from_numpy(audio).unsqueeze(0)
    for _name, ours_fn, _anchor, anchor_fn in pairs[1:] + pairs[:1]:
        ours_fn()
        anchor_fn()
    audio = full
    waveform["waveform"] = torch.from_numpy(audio).unsqueeze(0)
    rows = []
    for name, ours_fn, anchor, anchor_fn in pairs:
        t_anchor, _ = timed(anchor_fn, args.repeats)
        t_ours, out = timed(ours_fn, args.repeats)
        rows.append((name, t_ours, anchor, t_anchor))
        if name == "wx-diar-3s":
            per = {}
            with ours.recording(audio):
                cache = _DictCache({})
                for stage in ("vad", "wx-asr", "wx-align", "wx-diar"):
                    t0 = time.perf_counter()
                    cache.data[stage] = _run_stage(stage, ours, audio, cache)
                    per[stage] = time.perf_counter() - t0
            print("  wx-diar-3s chain, per stage: " + ", ".join(
                f"{s} {t:.1f} s ({len(audio) / SAMPLE_RATE / t:.0f}× RT)" for s, t in per.items()), flush=True)
    return rows


class _DictCache:
    """The part of ``runner.StageCache`` that ``run_stage`` reads: earlier stages' outputs."""

    def __init__(self, data: dict):
        self.data = data

    def get(self, stage: str, rid: str):
        return self.data.get(stage)


def _run_stage(stage, models, audio, cache):
    from corpus_tools.segment.runner import run_stage

    return run_stage(stage, models, audio, cache, "bench")


def cold_comparison(audio_path: Path, base: Path, args) -> tuple[float, float]:
    """Whole processes: ``corpus segment --method wx-diar-3s`` vs WhisperX load + transcribe."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    archive = base / "cold-archive"
    archive.mkdir(exist_ok=True)
    shutil.copy(audio_path, archive / audio_path.name)
    work = base / "cold-work"
    shutil.rmtree(work, ignore_errors=True)
    corpus = [sys.executable, "-m", "corpus_tools.cli"]
    subprocess.run([*corpus, "ingest", str(archive), "-o", str(work)], check=True, capture_output=True, env=env)
    from corpus_tools.segment.backends import ModelSet, SegmentConfig

    ct2 = ModelSet(SegmentConfig(whisper_model=args.whisper_model, models_dir=str(args.models_dir))).whisper_ct2_path()
    compute = args.compute_type if args.compute_type != "default" else ("float16" if args.device == "cuda" else "int8")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WHISPERX_ALONE, ct2, args.device, compute, str(audio_path),
                    str(args.beam_size), str(args.batch_size)], check=True, capture_output=True, env=env)
    t_wx = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = subprocess.run([*corpus, "segment", str(work), "--method", "wx-diar-3s", "--whisper-model",
                          args.whisper_model, "--models-dir", str(args.models_dir), "--device", args.device,
                          "--beam-size", str(args.beam_size), "--batch-size", str(args.batch_size)],
                         capture_output=True, text=True, env=env)
    t_ours = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stdout + res.stderr)
    return t_ours, t_wx


def all_methods(audio_path: Path, base: Path, args) -> tuple[float, float]:
    """``--method all`` from scratch vs one ASR pass (w-raw), through the CLI, models warm."""
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    archive = base / "all-archive"
    archive.mkdir(exist_ok=True)
    shutil.copy(audio_path, archive / audio_path.name)

    def run(name: str, methods: str) -> float:
        work = base / name
        shutil.rmtree(work, ignore_errors=True)
        assert CliRunner().invoke(app, ["ingest", str(archive), "-o", str(work)]).exit_code == 0
        t0 = time.perf_counter()
        res = CliRunner().invoke(app, ["segment", str(work), "--method", methods, "--whisper-model",
                                       args.whisper_model, "--models-dir", str(args.models_dir), "--device",
                                       args.device, "--beam-size", str(args.beam_size),
                                       "--batch-size", str(args.batch_size)])
        if res.exit_code != 0:
            raise SystemExit(res.output)
        return time.perf_counter() - t0

    run("all-warmup", "all")
    return run("all", "all"), run("asr", "w-raw")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", type=Path, default=None, help="a broadcast (default: a 172 s sample)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--whisper-model", default="base")
    ap.add_argument("--compute-type", default="default", help="default: int8 on CPU, float16 on CUDA")
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models-dir", type=Path, default=None, help="default: prepare-offline into a temp dir")
    ap.add_argument("--no-cold", dest="cold", action="store_false", help="skip the whole-process comparison")
    ap.add_argument("--with-all", action="store_true", help="also time --method all vs one ASR pass")
    args = ap.parse_args()
    if args.audio is not None and not args.audio.is_file():
        ap.error(f"--audio {args.audio}: no such file")
    if args.models_dir is not None and not args.models_dir.is_dir():
        ap.error(f"--models-dir {args.models_dir}: no such folder (corpus models prepare-offline --models-dir DIR)")

    import soundfile as sf

    base = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    if args.models_dir is None:
        from corpus_tools.models import prepare_offline

        args.models_dir = base / "models"
        prepare_offline(args.models_dir)
    audio_path = args.audio or build_broadcast(base / "broadcast.wav")
    audio_s = sf.info(str(audio_path)).duration
    print(f"audio {audio_s:.0f} s; device {args.device}; whisper {args.whisper_model} "
          f"({args.compute_type}), beam {args.beam_size}, batch {args.batch_size}, {args.threads} threads", flush=True)

    print(f"{'ours':11s} {'s':>7s} {'× RT':>7s}   {'anchor':26s} {'s':>7s} {'× RT':>7s}   anchor/ours")
    for name, t_ours, anchor, t_anchor in warm_comparison(audio_path, args):
        print(f"{name:11s} {t_ours:7.1f} {audio_s / t_ours:7.1f}   {anchor:26s} {t_anchor:7.1f} "
              f"{audio_s / t_anchor:7.1f}   {t_anchor / t_ours:6.2f}", flush=True)
    if args.cold:
        t_ours, t_wx = cold_comparison(audio_path, base, args)
        print(f"whole process: corpus segment --method wx-diar-3s {t_ours:.1f} s "
              f"({audio_s / t_ours:.1f}× RT) vs WhisperX load + transcribe {t_wx:.1f} s: "
              f"{t_ours / t_wx:.2f}× its time (target ≤ 1.5×)", flush=True)
    if args.with_all:
        t_all, t_asr = all_methods(audio_path, base, args)
        print(f"--method all {t_all:.1f} s vs one ASR pass (w-raw) {t_asr:.1f} s: {t_all / t_asr:.2f}× "
              f"(target ≤ 2.2×)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
