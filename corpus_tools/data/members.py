"""The audio inside shards: read one audio member's bytes and decode them, with the checks that
make an utterance unusable (empty, not decodable, non-finite samples).

Every reader of shard audio goes through here: the stream (zero-copy views of memory-mapped
shards, decoded straight into the batch tensor), ``corpus verify`` and whoever needs one
utterance's samples. A member's place in its shard (byte offset and size of its data) comes
from the tar headers (``corpus_tools.data.tar_index``). Shard audio is 16 kHz; a member at
another rate does not decode.

Reasons are the text of a skip event (``corpus_tools.bad_data``): ``audio member is empty``,
``audio is empty (no samples)``, ``audio holds non-finite samples (NaN or inf)``,
``audio does not decode (<the decoder's message>)``.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import wave

import numpy as np
import soundfile as sf

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.bad_data import short_reason

AUDIO_EXTENSIONS = ("wav", "flac")
EMPTY_MEMBER = "audio member is empty"

_PCM16_SCALE = np.float32(1.0 / 32768.0)  # soundfile's int16 → float scaling (exact)
_WAV_HEADER_PROBE = 4096  # bytes handed to `wave` to find the data chunk
_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class UnusableAudio(ValueError):
    """An audio member that cannot be trained on; the message is the reason."""


def read_member(path: str | os.PathLike, offset: int, size: int) -> bytes:
    """The ``size`` bytes of a member's data at byte ``offset`` of an (uncompressed) tar shard."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class MappedShards:
    """Audio member bytes as zero-copy views of memory-mapped shards (a few kept open)."""

    def __init__(self, max_open: int = 8):
        self.maps: dict[str, mmap.mmap] = {}
        self.max_open = max_open

    def view(self, path: str, offset: int, size: int) -> memoryview:
        m = self.maps.get(path)
        if m is None:
            if len(self.maps) >= self.max_open:
                self._close(self.maps.pop(next(iter(self.maps))))
            with open(path, "rb") as fh:
                m = self.maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(m)[offset: offset + size]

    @staticmethod
    def _close(m: mmap.mmap) -> None:
        try:
            m.close()
        except BufferError:  # a view is still alive somewhere; the GC closes it later
            pass

    def close(self) -> None:
        for m in self.maps.values():
            self._close(m)
        self.maps.clear()

    def __del__(self):
        self.close()


def member_info(raw):
    """The audio header of a member (``samplerate``, ``channels``, ``frames``, ``subtype``);
    raises when the bytes are no audio soundfile reads."""
    return sf.info(io.BytesIO(raw))


def audio_problem(exc: BaseException) -> str:
    """The reason for audio whose decoder raised ``exc`` (without the buffer's address)."""
    return f"audio does not decode ({_BYTES_IO.sub('the member', short_reason(exc))})"


def _decode_pcm16_wav(raw, out: np.ndarray, crop: int) -> int | None:
    """Fast path for 16-bit PCM WAV (what ``corpus shard`` and nanow2v2 write).

    The stdlib ``wave`` module parses the header and stops at the start of the samples;
    numpy then scales the samples straight from the (memory-mapped) shard into ``out``,
    with no intermediate copies. Returns None for anything else (float WAV, extensible
    headers, other rates), which soundfile then decodes.
    """
    head = io.BytesIO(bytes(raw[:_WAV_HEADER_PROBE]))
    try:
        with wave.open(head) as w:
            if w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
                return None
            channels = w.getnchannels()
            frames = w.getnframes()
            data_start = head.tell()  # wave.open leaves the file at the first sample
    except (wave.Error, EOFError):
        return None
    crop = min(crop, frames)
    frames = min(frames - crop, len(out), (len(raw) - data_start) // (2 * channels) - crop)
    if frames <= 0:
        return 0
    pcm = np.frombuffer(raw, dtype="<i2", count=frames * channels,
                        offset=data_start + 2 * channels * crop)
    if channels == 1:
        np.multiply(pcm, _PCM16_SCALE, out=out[:frames], casting="unsafe")
    else:
        out[:frames] = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1) * _PCM16_SCALE
    del pcm
    return frames


def _decode_soundfile(raw, out: np.ndarray, crop: int) -> int:
    with sf.SoundFile(io.BytesIO(raw)) as f:
        if f.samplerate != SAMPLE_RATE:
            raise ValueError(f"shard audio is {f.samplerate} Hz; the reader expects {SAMPLE_RATE} Hz")
        if crop:
            f.seek(crop)
        if f.channels == 1:
            got = f.read(len(out), dtype="float32", out=out)
            return len(got)
        x = f.read(len(out), dtype="float32", always_2d=True).mean(axis=1)
        out[: len(x)] = x
        return len(x)


def decode_into(raw, out: np.ndarray, crop: int = 0) -> tuple[int, str | None]:
    """Decode wav/flac bytes from frame ``crop`` into ``out`` (float32, mono; at most
    ``len(out)`` frames). Never raises: (frames, None), or (0, why the audio is unusable)."""
    try:
        if len(raw) == 0:
            return 0, EMPTY_MEMBER
        n = _decode_pcm16_wav(raw, out, crop) if bytes(raw[:4]) == b"RIFF" else None
        integer = n is not None  # 16-bit PCM cannot hold NaN or inf
        if n is None:
            n = _decode_soundfile(raw, out, crop)
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, they are bad data
        return 0, audio_problem(e)
    if n <= 0:
        return 0, "audio is empty (no samples)"
    if not integer and not np.isfinite(out[:n]).all():
        return 0, "audio holds non-finite samples (NaN or inf)"
    return n, None


def decode_member(raw, crop: int = 0, frames: int | None = None) -> np.ndarray:
    """The samples (float32 mono 16 kHz) of an audio member from frame ``crop``, at most
    ``frames`` of them (default: to its end). Raises ``UnusableAudio`` with the reason."""
    if frames is None:
        try:
            frames = member_info(raw).frames - crop if len(raw) else 0
        except Exception as e:  # noqa: BLE001 - a header soundfile cannot read
            raise UnusableAudio(audio_problem(e)) from e
    out = np.zeros(max(0, frames), dtype=np.float32)
    n, problem = decode_into(raw, out, crop)
    if problem is not None:
        raise UnusableAudio(problem)
    return out[:n]
