"""Demucs stems of FMA for ``mix-instr`` / ``mix-vocal`` (thesis §6.2.2) — ``corpus stem``.

Each music clip is separated by Demucs into its sources; the ``vocals`` source becomes the
**vocal** stem and the sum of all other sources (drums + bass + other) the **instrumental**
stem. Both are written as 16 kHz mono wav. The thesis "applied a basic SAD on the vocal stem
to filter out songs which were already instrumental before stemming": here Silero VAD
(bundled with the ``silero-vad`` package, works offline) measures the seconds of speech-like
activity in each vocal stem, and a stem with less than ``min_vocal_seconds`` is marked
``usable_vocal = False`` and left out of ``mix-vocal``.

Output folder::

    vocals/{clip}.wav  instrumental/{clip}.wav   the stems (16 kHz mono, 16-bit)
    records/{clip}.json                          one per finished clip: the commit marker
    stems.parquet                                the table (clip_id, vocal_path, ...)

Resumable per clip: a clip whose ``records/{clip}.json`` exists is skipped; every file is
written to a temporary name and renamed, the record last, so a crash never leaves a clip
that looks done. Clips are separated in batches (zero padded to the longest) on the GPU
when one is present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from corpus_tools.atomic import write_text
from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.models import load_demucs
from corpus_tools.simulate.pools import clip_id_of, manifest_rows

STEMS_TABLE = "stems.parquet"
DEFAULT_MODEL = "htdemucs"
DEFAULT_MIN_VOCAL_SECONDS = 0.5


def safe_name(clip_id: str) -> str:
    """A file name for a clip id (ids may hold slashes or spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(clip_id)).strip("._") or "clip"


# -- models -------------------------------------------------------------------------------


def load_separator(name_or_path: str = DEFAULT_MODEL, models_dir: str | Path | None = None,
                   device: str = "cpu"):
    """A Demucs model from a name (pretrained / in ``models_dir``) or a saved ``.th`` file,
    through the models registry (``corpus_tools.models.load_demucs``)."""
    model = load_demucs(name_or_path, models_dir, device)
    model.eval()
    return model


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- speech activity on vocal stems ---------------------------------------------------------


def load_vad():
    """Silero VAD (JIT model bundled in the silero-vad wheel; no download)."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


def vocal_speech_seconds(audio: np.ndarray, vad=None, sample_rate: int = SAMPLE_RATE) -> float:
    """Seconds of speech-like activity that Silero VAD finds in a (vocal) signal."""
    import torch
    from silero_vad import get_speech_timestamps

    if audio.size == 0:
        return 0.0
    vad = vad if vad is not None else load_vad()
    ts = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                               vad, sampling_rate=sample_rate)
    return float(sum(t["end"] - t["start"] for t in ts)) / sample_rate


# -- separation ------------------------------------------------------------------------------


@dataclass
class Clip:
    clip_id: str
    path: str
    start: float | None
    end: float | None


def manifest_clips(manifest: str | Path) -> list[Clip]:
    """The clips of a music (segments) manifest; ids as ``corpus simulate`` uses them."""
    rows = manifest_rows(manifest, "fma")
    clips = [Clip(clip_id_of(r, i), str(r["path"]), r.get("start"), r.get("end"))
             for i, r in enumerate(rows)]
    seen: set[str] = set()
    for c in clips:
        if c.clip_id in seen:
            raise ValueError(f"clip id {c.clip_id!r} occurs twice in {manifest}")
        seen.add(c.clip_id)
    return clips


def read_clip(clip: Clip, samplerate: int, channels: int):
    """Decode a clip range to ``[channels, T]`` float32 at the model's rate (ffmpeg)."""
    from demucs.audio import AudioFile

    duration = None
    if clip.end is not None:
        duration = float(clip.end) - float(clip.start or 0.0)
    return AudioFile(Path(clip.path)).read(seek_time=float(clip.start or 0.0) or None,
                                           duration=duration, streams=0,
                                           samplerate=samplerate, channels=channels)


def separate(model, waves: list, device: str, shifts: int = 0, overlap: float = 0.25):
    """Separate a batch of ``[C, T]`` waves; returns ``[(vocals, instrumental)]`` mono numpy.

    Each wave is normalised as ``demucs.api.Separator`` does (zero mean, unit std of the
    channel mean), zero padded to the longest, separated in one ``apply_model`` call, and
    cropped back. ``shifts=0`` keeps the result deterministic (Demucs draws shifts from
    Python's ``random``).
    """
    import torch
    from demucs.apply import apply_model

    if "vocals" not in model.sources:
        raise ValueError(f"the Demucs model has no 'vocals' source (sources: {model.sources})")
    v = model.sources.index("vocals")
    longest = max(w.shape[-1] for w in waves)
    batch = torch.zeros(len(waves), model.audio_channels, longest)
    stats = []
    for i, w in enumerate(waves):
        ref = w.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        batch[i, :, : w.shape[-1]] = (w - mean) / std
        stats.append((mean, std))
    with torch.no_grad():
        out = apply_model(model, batch, shifts=shifts, split=True, overlap=overlap,
                          device=device, progress=False)
    results = []
    for i, w in enumerate(waves):
        mean, std = stats[i]
        # every source gets the mean back, so the instrumental sum carries (n - 1) of it:
        # subtract the vocal estimate from the mixture instead of re-adding the mean per source
        src = out[i, :, :, : w.shape[-1]] * std
        vocals = src[v] + mean
        instrumental = src.sum(0) - src[v] + mean
        results.append((vocals.mean(0).cpu().numpy(), instrumental.mean(0).cpu().numpy()))
    return results


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    y = x if sr == SAMPLE_RATE else soxr.resample(x, sr, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


def _write_record(path: Path, data: dict) -> None:
    # json.dumps' defaults (ASCII escapes, no indent) are the records' format
    write_text(path, json.dumps(data, sort_keys=True) + "\n")


def stem_clips(manifest: str | Path, out_dir: str | Path, *, model: str = DEFAULT_MODEL,
               models_dir: str | Path | None = None, device: str | None = None,
               batch_size: int = 4, min_vocal_seconds: float = DEFAULT_MIN_VOCAL_SECONDS,
               shifts: int = 0, on_clip: Callable[[str, str], None] | None = None):
    """``corpus stem``: separate every clip not yet done, then (re)write ``stems.parquet``.

    ``on_clip(clip_id, status)`` is called per clip (``done``/``skipped``/``failed``) for
    progress bars. Returns the stems table (polars DataFrame).
    """
    out = Path(out_dir)
    records = out / "records"
    for sub in ("vocals", "instrumental", "records"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    clips = manifest_clips(manifest)
    todo = []
    for c in clips:
        if (records / f"{safe_name(c.clip_id)}.json").exists():
            if on_clip:
                on_clip(c.clip_id, "skipped")
        else:
            todo.append(c)
    if todo:
        device = device or default_device()
        sep = load_separator(model, models_dir, device)
        vad = load_vad()
        for chunk in clip_batches(todo, batch_size):
            stem_batch(chunk, out, sep, vad, device, model_name=str(model), shifts=shifts,
                       min_vocal_seconds=min_vocal_seconds, on_clip=on_clip)
    return write_table(out, [c.clip_id for c in clips])


def clip_batches(todo: list[Clip], batch_size: int) -> list[list[Clip]]:
    """The batches ``stem_clips`` separates together (the Ray backend uses the same ones,
    so every clip is zero padded exactly as in a local run)."""
    n = max(1, batch_size)
    return [todo[k:k + n] for k in range(0, len(todo), n)]


def stem_batch(chunk: list[Clip], out: Path, sep, vad, device: str, *, model_name: str,
               shifts: int = 0, min_vocal_seconds: float = DEFAULT_MIN_VOCAL_SECONDS,
               on_clip: Callable[[str, str], None] | None = None) -> None:
    """Separate one batch of clips and write their stems and records (the record last)."""
    from corpus_tools.audio import write_audio

    out = Path(out)
    records = out / "records"
    waves, ok = [], []
    for c in chunk:
        try:
            waves.append(read_clip(c, sep.samplerate, sep.audio_channels))
            ok.append(c)
        except Exception as exc:  # a broken clip is recorded, not fatal
            _write_record(records / f"{safe_name(c.clip_id)}.json", {
                "clip_id": c.clip_id, "source_path": c.path, "error": str(exc)[-300:],
                "vocal_path": None, "instrumental_path": None,
                "vocal_speech_seconds": 0.0, "usable_vocal": False, "duration": None,
                "model": model_name})
            if on_clip:
                on_clip(c.clip_id, "failed")
    if not ok:
        return
    for c, (vocals, instr) in zip(ok, separate(sep, waves, device, shifts=shifts)):
        vocals, instr = _resample(vocals, sep.samplerate), _resample(instr, sep.samplerate)
        name = safe_name(c.clip_id)
        write_audio(out / "vocals" / f"{name}.wav", vocals)
        write_audio(out / "instrumental" / f"{name}.wav", instr)
        speech = vocal_speech_seconds(vocals, vad)
        _write_record(records / f"{name}.json", {
            "clip_id": c.clip_id, "source_path": c.path, "error": None,
            "vocal_path": f"vocals/{name}.wav",
            "instrumental_path": f"instrumental/{name}.wav",
            "vocal_speech_seconds": round(speech, 3),
            "usable_vocal": bool(speech >= min_vocal_seconds),
            "duration": round(vocals.size / SAMPLE_RATE, 6), "model": model_name})
        if on_clip:
            on_clip(c.clip_id, "done")


STEMS_SCHEMA = {
    "clip_id": "String", "vocal_path": "String", "instrumental_path": "String",
    "vocal_speech_seconds": "Float64", "usable_vocal": "Boolean", "duration": "Float64",
    "source_path": "String", "model": "String", "error": "String",
}


def write_table(out_dir: str | Path, clip_ids: list[str] | None = None):
    """Collect ``records/*.json`` into ``stems.parquet`` (manifest order when ids are given)."""
    import polars as pl

    from corpus_tools.manifests import write_parquet_atomic

    out = Path(out_dir)
    recs = {}
    for f in sorted((out / "records").glob("*.json")):
        r = json.loads(f.read_text())
        recs[r["clip_id"]] = r
    order = clip_ids if clip_ids is not None else sorted(recs)
    rows = [recs[c] for c in order if c in recs]
    schema = {k: getattr(pl, v) for k, v in STEMS_SCHEMA.items()}
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    write_parquet_atomic(df, out / STEMS_TABLE)
    return df


__all__ = [
    "STEMS_TABLE", "load_separator", "load_vad", "vocal_speech_seconds", "manifest_clips",
    "read_clip", "separate", "stem_clips", "write_table", "safe_name", "default_device",
    "clip_batches", "stem_batch",
]
