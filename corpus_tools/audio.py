"""Audio I/O: probe any media file ffmpeg reads, decode time ranges to 16 kHz mono float32.

Nothing here decodes by hand. Three well-kept libraries do the work:

* ``ffprobe`` (Debian ``ffmpeg``) describes containers and streams, and a null decode with
  ``ffmpeg`` tells whether the whole stream really decodes (truncated files);
* ``soundfile`` (libsndfile) reads wav/flac/ogg with exact sample seeking, resampled with
  ``soxr`` — the fast path for the formats the pipeline itself writes;
* ``torchcodec`` (FFmpeg libraries) decodes everything else by time range, resampling and
  down-mixing inside FFmpeg, so a 3-hour MXF is never decoded whole to get 30 s of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
_SOUNDFILE_EXT = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".w64"}


class AudioError(RuntimeError):
    """A file cannot be used as audio; ``str(err)`` is a short reason for the manifest."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    duration: float
    sample_rate: int
    channels: int
    codec: str
    container: str
    size_bytes: int


def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise AudioError(
            f"'{tool}' not found on PATH: install FFmpeg (Debian: apt-get install -y ffmpeg)")
    return exe


def probe(path: str | os.PathLike) -> AudioInfo:
    """Describe the first audio stream of ``path``; raise ``AudioError`` with a reason."""
    p = Path(path)
    if not p.exists():
        raise AudioError("file not found")
    if p.is_dir():
        raise AudioError("is a directory")
    size = p.stat().st_size
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    cmd = [_require("ffprobe"), "-v", "error", "-print_format", "json",
           "-show_format", "-show_streams", str(p)]
    res = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()
        detail = msg[-1] if msg else f"ffprobe exit {res.returncode}"
        detail = detail.replace(str(p), "<file>")
        raise AudioError(f"not a readable media file: {detail}")
    info = json.loads(res.stdout or "{}")
    streams = info.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        kinds = sorted({s.get("codec_type", "?") for s in streams})
        if kinds:
            raise AudioError(f"no audio stream (streams: {', '.join(kinds)})")
        raise AudioError("not a media file: no streams")
    a = audio[0]
    fmt = info.get("format", {})
    duration = _float(a.get("duration")) or _float(fmt.get("duration"))
    if duration is None or duration <= 0:
        raise AudioError("audio stream has no duration")
    return AudioInfo(
        path=str(p.resolve()),
        duration=float(duration),
        sample_rate=int(a.get("sample_rate") or 0),
        channels=int(a.get("channels") or 0),
        codec=str(a.get("codec_name", "unknown")),
        container=str(fmt.get("format_name", "unknown")),
        size_bytes=size,
    )


def _float(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def check_decodes(path: str | os.PathLike, expected_duration: float,
                  tolerance: float = 0.02) -> float:
    """Decode the whole first audio stream to nowhere and return the decoded duration.

    Raises ``AudioError`` when ffmpeg fails or yields clearly less audio than the
    container promises (a truncated download or copy). ``ffmpeg`` decodes compressed
    broadcast audio at hundreds of times real time, so this is cheap next to ASR.
    """
    cmd = [_require("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-vn", "-f", "null", "-progress", "pipe:1", "-nostats", "-"]
    res = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    out_us = [ln.split("=", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("out_time_us=")]
    decoded = None
    for v in reversed(out_us):
        try:
            decoded = int(v) / 1e6
            break
        except ValueError:
            continue
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise AudioError(f"decode failed: {err[-1] if err else 'ffmpeg exit ' + str(res.returncode)}")
    if decoded is None or decoded <= 0:
        raise AudioError("decode failed: no audio decoded")
    if decoded < expected_duration * (1 - tolerance) - 0.5:
        raise AudioError(
            f"truncated: decoded {decoded:.2f} s of the {expected_duration:.2f} s the header promises")
    return decoded


# -- decoding ---------------------------------------------------------------------------


def _mono(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 1 else x.mean(axis=1)


def _resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x, sr, target, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``[start, end)`` seconds of ``path`` to mono float32 at ``sample_rate``.

    Only the requested range is decoded. The result may be shorter than asked for when
    the range runs past the end of the file.
    """
    p = Path(path)
    start = max(0.0, float(start or 0.0))
    if end is not None and end <= start:
        return np.zeros(0, dtype=np.float32)
    if p.suffix.lower() in _SOUNDFILE_EXT:
        try:
            return _load_soundfile(p, start, end, sample_rate)
        except AudioError:
            raise
        except Exception:
            pass  # e.g. a .wav that is really something else: let FFmpeg try
    return _load_ffmpeg(p, start, end, sample_rate)


def _load_soundfile(p: Path, start: float, end: float | None, sr_out: int) -> np.ndarray:
    import soundfile as sf

    with sf.SoundFile(str(p)) as f:
        sr = f.samplerate
        first = int(round(start * sr))
        if first >= f.frames:
            return np.zeros(0, dtype=np.float32)
        f.seek(first)
        n = -1 if end is None else max(0, int(round(end * sr)) - first)
        x = f.read(frames=n, dtype="float32", always_2d=True)
    return _resample(_mono(x), sr, sr_out)


def _load_ffmpeg(p: Path, start: float, end: float | None, sr_out: int) -> np.ndarray:
    if start > 0 or end is not None:
        # torchcodec 0.7 ranged reads of mp3 come back shifted by the 1105-sample
        # encoder delay (measured here; also sensein/senselab#573) and decode from the
        # start of the file anyway (meta-pytorch/torchcodec#1448), so ranges would not
        # line up with the whole-file decodes Whisper's timestamps refer to. ffmpeg's
        # accurate input seek lines up and seeks.
        return _load_ffmpeg_cli(p, start, end, sr_out)
    try:
        from torchcodec.decoders import AudioDecoder
    except Exception:  # torchcodec missing or its FFmpeg libraries not found
        return _load_ffmpeg_cli(p, start, end, sr_out)
    try:
        dec = AudioDecoder(str(p), sample_rate=sr_out, num_channels=1)
        samples = dec.get_samples_played_in_range(start_seconds=start, stop_seconds=end)
    except Exception as exc:
        raise AudioError(f"decode failed: {exc}") from exc
    x = samples.data.numpy()
    # torchcodec returns whole frames around the range; trim to the exact request.
    offset = int(round((start - samples.pts_seconds) * sr_out))
    x = x[0, max(0, offset):]
    if end is not None:
        x = x[: int(round((end - start) * sr_out))]
    return np.ascontiguousarray(x, dtype=np.float32)


def _load_ffmpeg_cli(p: Path, start: float, end: float | None, sr_out: int) -> np.ndarray:
    cmd = [_require("ffmpeg"), "-nostdin", "-v", "error", "-ss", f"{start:.6f}", "-i", str(p)]
    if end is not None:
        cmd += ["-t", f"{end - start:.6f}"]
    cmd += ["-map", "0:a:0", "-ac", "1", "-ar", str(sr_out), "-f", "f32le", "pipe:1"]
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0:
        raise AudioError(f"decode failed: {res.stderr.decode(errors='replace').strip()[-200:]}")
    return np.frombuffer(res.stdout, dtype=np.float32).copy()


# -- writing ----------------------------------------------------------------------------


def encode_audio(x: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "wav") -> bytes:
    """Encode mono float audio as 16-bit PCM WAV or FLAC bytes (deterministic output)."""
    import io

    import soundfile as sf

    fmt = fmt.lower()
    if fmt not in ("wav", "flac"):
        raise ValueError(f"unsupported audio format {fmt!r}: use wav or flac")
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fmt = p.suffix.lstrip(".").lower() or "wav"
    data = encode_audio(x, sample_rate, fmt)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an in-memory wav/flac (as stored in shards) to mono float32."""
    import io

    import soundfile as sf

    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return _mono(x), sr
