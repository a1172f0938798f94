"""Stream utterances from WebDataset tar shards and batch them by seconds of audio.

This is the data path of the trainer (and of ``corpus simulate``): it lives in
``corpus_tools`` so that the curation side batches exactly like training without
importing ``trainer``.

Pipeline, per data consumer (one DDP rank × one DataLoader worker)::

    shards ──shuffle (seed, epoch)──► this consumer's share ──► read tar headers + .json only
          ──► sample shuffle buffer ──► duration batcher (priority queue, thesis §5.2.3)
          ──► decode the audio of the emitted batch ──► transform (simulation hook) ──► Batch

Audio is decoded only when a batch is emitted: the batcher works on ``num_frames`` from
each utterance's ``.json``, so skipping ``start_batch`` batches for an exact resume costs
a pass over tar headers, not a decode of the audio.

Sharing out the data: every epoch the shard list is shuffled with the same seed on every
rank. Whole rounds of shards (``len(shards) // consumers * consumers`` of them) are dealt
out one shard per consumer; the remaining shards are read by every consumer, each keeping
every ``consumers``-th utterance. So the shares are disjoint, every utterance is seen
exactly once per epoch across ranks × workers, and no consumer starves when there are
fewer shards than consumers.

What it reads: tar shards (plain, or gzip/bzip2/xz compressed) whose members are grouped
by key as WebDataset does (the key is the member name up to the first dot of its base
name), with ``.wav`` or ``.flac`` audio at 16 kHz and an optional ``.json``. So it reads
``corpus shard`` output in both formats and nanow2v2's own shards. The other way round,
nanow2v2's loader decodes ``.wav`` members only: it reads our wav shards, not flac ones
(the ``webdataset`` library reads both).

Damage is skipped, never fatal (``corpus_tools.bad_data``): an utterance whose json does not
parse or whose audio does not decode, is empty or holds non-finite samples is left out of its
batch, and a shard that is truncated or unreadable past some point ends there (what precedes
the damage is kept). Each skip is a *skip event* carried by the batch it was found for
(``Batch.skipped``); a batch whose utterances were all bad is yielded empty rather than left
out, so batch ``b`` of a rank is the same batch in a resumed run (``start_batch``).
"""

from __future__ import annotations

import bisect
import glob
import io
import json
import logging
import mmap
import os
import re
import tarfile
import wave
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from corpus_tools.bad_data import SHARD, short_reason, skip_event

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = ("wav", "flac")
_log = logging.getLogger(__name__)
SPAN_POLICIES = ("split", "drop")


# -- data types ---------------------------------------------------------------------------


@dataclass
class Utterance:
    """One decoded utterance."""

    key: str
    audio: np.ndarray  # float32 mono, 16 kHz
    meta: dict  # the shard's json (id, num_frames, sample_rate, duration, transcript, ...)


@dataclass
class Batch:
    """A zero-padded batch of utterances (0 rows when every utterance of it was bad)."""

    audio: torch.Tensor  # [B, T] float32, zero padded
    lengths: torch.Tensor  # [B] int64, valid samples per row
    keys: list[str]
    meta: list[dict]
    sample_rate: int = SAMPLE_RATE
    skipped: list[dict] = field(default_factory=list)  # skip events found for this batch

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def seconds(self) -> float:
        """Seconds of real (unpadded) audio in the batch."""
        return float(self.lengths.sum()) / self.sample_rate

    @property
    def padded_seconds(self) -> float:
        """Seconds the model processes: rows × longest row."""
        return float(self.audio.shape[0] * self.audio.shape[1]) / self.sample_rate

    @property
    def padding_fraction(self) -> float:
        total = self.audio.shape[0] * self.audio.shape[1]
        return 0.0 if total == 0 else 1.0 - float(self.lengths.sum()) / total

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return replace(self, audio=self.audio.pin_memory(), lengths=self.lengths.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return replace(self, audio=self.audio.to(device, non_blocking=non_blocking),
                       lengths=self.lengths.to(device, non_blocking=non_blocking))

    def utterances(self) -> list[Utterance]:
        """Back to a list of (unpadded) utterances."""
        audio = self.audio.cpu().numpy()
        return [Utterance(k, audio[i, : int(n)].copy(), m)
                for i, (k, n, m) in enumerate(zip(self.keys, self.lengths.tolist(), self.meta))]


def collate(utts: list[Utterance]) -> Batch:
    """Stack utterances into a zero-padded ``Batch``."""
    lengths = [len(u.audio) for u in utts]
    longest = max(lengths, default=0)
    audio = torch.zeros((len(utts), longest), dtype=torch.float32)
    for row, u in enumerate(utts):
        if len(u.audio):
            audio[row, : len(u.audio)] = torch.from_numpy(np.asarray(u.audio, dtype=np.float32))
    return Batch(audio, torch.tensor(lengths, dtype=torch.int64), [u.key for u in utts],
                 [u.meta for u in utts])


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Padding fraction over many batches: padded samples / all samples processed."""
    real = total = 0
    for b in batches:
        real += int(b.lengths.sum())
        total += b.audio.shape[0] * b.audio.shape[1]
    return 0.0 if total == 0 else 1.0 - real / total


# -- finding shards -----------------------------------------------------------------------


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_shard_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(SHARD_SUFFIXES)


def _visible(path: Path, root: Path) -> bool:
    """No hidden folder between ``root`` and ``path`` (``.state/`` holds resume markers)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def list_shards(src: str | os.PathLike | Sequence) -> list[str]:
    """Shard paths from a directory, a glob / brace pattern, a file, or a list of those.

    A directory yields its tar files (``*.tar``, ``*.partial.tar``, compressed ``*.tar.gz``
    …), searched recursively (hidden folders skipped) when none lie at the top; hidden files
    (a writer's temp files) and resume markers never count. The result is sorted within each
    source and de-duplicated.
    """
    if isinstance(src, (list, tuple)):
        out: list[str] = []
        for s in src:
            out.extend(list_shards(s))
        return list(dict.fromkeys(out))
    s = str(src)
    p = Path(s)
    if p.is_dir():
        found = sorted(str(x) for x in p.iterdir() if x.is_file() and _is_shard_name(x.name))
        if not found:
            found = sorted(str(x) for x in p.rglob("*")
                           if x.is_file() and _is_shard_name(x.name) and _visible(x, p))
        return found
    if p.is_file():
        return [s]
    patterns = [s]
    if "{" in s:
        from braceexpand import braceexpand  # a webdataset dependency

        patterns = list(braceexpand(s))
    out = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            out.extend(sorted(x for x in glob.glob(pat) if _is_shard_name(Path(x).name)))
        elif Path(pat).is_file():
            out.append(pat)
    if not out:
        raise FileNotFoundError(f"no shards found at {s}")
    return list(dict.fromkeys(out))


# -- reading one shard's index (headers + json, audio left on disk) -----------------------


@dataclass
class _Record:
    """An utterance whose audio has not been decoded yet."""

    key: str
    meta: dict
    num_frames: int  # frames the batch will hold (after cropping)
    shard: str
    offset: int = -1  # byte offset of the audio member's data in the shard (-1: see data)
    size: int = 0
    data: bytes | None = None  # audio bytes when the shard cannot be seeked (compressed)
    crop: int = 0  # first frame kept when the utterance is cropped


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = name up to the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


_TAR_BLOCK = 512
# what a damaged or cut tar raises while it is read (gzip/bz2/lzma streams: EOFError, zlib.error,
# OSError; tarfile: ReadError, its header errors; a member name that does not decode: UnicodeError)
_SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeError)


def _warn_skip(event: dict) -> None:
    from corpus_tools.bad_data import describe

    _log.warning("skipped %s", describe(event))


class _Sample:
    """The members of one key while a shard is read: json, audio and what is wrong with them."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self.meta: dict | None = None
        self.audio: tuple | None = None  # (offset, size, data)
        self.problem: str | None = None

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo, ext: str, seekable: bool) -> None:
        last = ext.rsplit(".", 1)[-1]
        if last == "json":
            raw = tf.extractfile(m).read()  # a cut member raises here: the shard is damaged
            try:
                meta = json.loads(raw)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                self.problem = f"json does not parse ({short_reason(e)})"
                return
            if not isinstance(meta, dict):
                self.problem = f"json is a {type(meta).__name__}, not an object"
            else:
                self.meta = meta
        elif last in AUDIO_EXTENSIONS:
            if seekable:
                self.audio = (m.offset_data, m.size, None)
            else:
                self.audio = (-1, m.size, tf.extractfile(m).read())

    def inside(self, end: int | None) -> bool:
        """Whether the audio member lies wholly inside a file of ``end`` bytes."""
        return end is None or self.audio is None or self.audio[0] + self.audio[1] <= end

    def record(self, report: Callable[[dict], None]) -> "_Record | None":
        """The record, or None (reported when the sample had json or audio but is unusable)."""
        if self.audio is None:
            if self.meta is not None or self.problem is not None:
                report(skip_event(self.path, self.key, self.problem or "has no audio member"))
            return None
        if self.problem is None and self.audio[1] == 0:
            self.problem = "audio member is empty"
        if self.problem is None:
            try:
                return _make_record(self.path, self.key, self.meta, self.audio)
            except _Unusable as e:
                self.problem = str(e)
            except Exception as e:  # noqa: BLE001 - any failure to read a header is bad data
                self.problem = _audio_problem(e)
        report(skip_event(self.path, self.key, self.problem))
        return None


def read_shard_records(path: str, on_bad: Callable[[dict], None] | None = None) -> Iterator[_Record]:
    """Yield one record per sample of a tar shard, reading only headers and json.

    Damage never raises. A sample whose json does not parse, whose audio member is empty or
    missing, or whose audio header cannot be read (json without ``num_frames``) is skipped; a
    tar that cannot be read past some point (cut short, corrupt, not a tar) ends there, and
    the samples before the damage are kept. Each is reported to ``on_bad`` as a skip event
    (``corpus_tools.bad_data.skip_event``; default: a logged warning).
    """
    report = on_bad or _warn_skip
    seekable = path.endswith(".tar")
    sample: _Sample | None = None
    kept, last_key, end = 0, None, None
    try:
        with tarfile.open(path, "r:" if seekable else "r:*") as tf:
            end = os.fstat(tf.fileobj.fileno()).st_size if seekable else None
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _split_member(m.name)
                if sample is not None and k != sample.key:
                    rec = sample.record(report)
                    sample = None
                    if rec is not None:
                        kept, last_key = kept + 1, rec.key
                        yield rec
                if sample is None:
                    sample = _Sample(path, k)
                sample.add(tf, m, ext, seekable)
            if seekable and not _ends_cleanly(tf, end):
                raise tarfile.ReadError("the end-of-archive marker is missing")
    except _SHARD_ERRORS as e:
        if sample is not None and sample.audio is not None and sample.inside(end):
            rec = sample.record(report)  # complete before the damage
            if rec is not None:
                kept, last_key = kept + 1, rec.key
                yield rec
        where = f"after {last_key}" if last_key is not None else "from its start"
        report(skip_event(path, last_key, f"truncated or unreadable {where}, {kept} utterance"
                                          f"{'s' * (kept != 1)} kept ({short_reason(e)})", kind=SHARD))
        return
    if sample is not None:
        rec = sample.record(report)
        if rec is not None:
            yield rec


def _ends_cleanly(tf: tarfile.TarFile, end: int) -> bool:
    """A tar read to its last member ends in zero blocks; a copy cut at (or inside) a member
    header does not, and tarfile stops there without an error."""
    if tf.offset >= end:
        return False
    tf.fileobj.seek(tf.offset)
    tail = tf.fileobj.read(min(end - tf.offset, 2 * _TAR_BLOCK))
    return not tail.strip(b"\0")


class _Unusable(ValueError):
    """A sample that reads but cannot be used; the message is the reason."""


_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


def _audio_problem(exc: BaseException) -> str:
    return f"audio does not decode ({_BYTES_IO.sub('the member', short_reason(exc))})"


def _make_record(path: str, key: str, meta: dict | None, audio: tuple) -> _Record:
    offset, size, data = audio
    meta = dict(meta or {})
    n = meta.get("num_frames")
    if n is None:  # no json (or an old one): read the audio header instead
        import soundfile as sf

        raw = data if data is not None else _pread(path, offset, size)
        info = sf.info(io.BytesIO(raw))
        n = info.frames
        meta.setdefault("sample_rate", info.samplerate)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise _Unusable(f"json num_frames is {n!r}, not a number") from None
    if n <= 0:
        raise _Unusable(f"audio is empty ({n} frames)")
    meta.setdefault("num_frames", n)
    return _Record(key=key, meta=meta, num_frames=n, shard=path, offset=offset, size=size, data=data)


def _pread(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class _RecordBatch(list):
    """A batch of records with the skip events handed out with it (taken from ``events``)."""

    def __init__(self, records: Iterable[_Record], events: list[dict]):
        super().__init__(records)
        self.skipped = events[:]
        events.clear()


def _decode_record(source: "_AudioSource", rec: _Record, out: np.ndarray) -> tuple[int, str | None]:
    """Decode a record's audio into ``out``: (frames, None) or (0, why it is unusable)."""
    try:
        raw = source.read(rec)
    except (OSError, ValueError) as e:  # the shard moved or shrank since its headers were read
        return 0, f"audio cannot be read ({short_reason(e)})"
    return _decode_checked(raw, out, rec.crop)


class _AudioSource:
    """Audio member bytes as zero-copy views of memory-mapped shards (a few kept open)."""

    def __init__(self, max_open: int = 8):
        self.maps: dict[str, mmap.mmap] = {}
        self.max_open = max_open

    def read(self, rec: _Record) -> bytes | memoryview:
        if rec.data is not None:
            return rec.data
        m = self.maps.get(rec.shard)
        if m is None:
            if len(self.maps) >= self.max_open:
                self._close(self.maps.pop(next(iter(self.maps))))
            with open(rec.shard, "rb") as fh:
                m = self.maps[rec.shard] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(m)[rec.offset: rec.offset + rec.size]

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


_PCM16_SCALE = np.float32(1.0 / 32768.0)  # soundfile's int16 → float scaling (exact)
_WAV_HEADER_PROBE = 4096  # bytes handed to `wave` to find the data chunk


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


def _decode_into(raw: bytes, out: np.ndarray, crop: int) -> int:
    """Decode wav/flac bytes into ``out`` (float32 [n]) from frame ``crop``; return frames."""
    if bytes(raw[:4]) == b"RIFF":
        n = _decode_pcm16_wav(raw, out, crop)
        if n is not None:
            return n
    return _decode_soundfile(raw, out, crop)


def _decode_soundfile(raw, out: np.ndarray, crop: int) -> int:
    import soundfile as sf

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


def _decode_checked(raw, out: np.ndarray, crop: int) -> tuple[int, str | None]:
    """``_decode_into`` that never raises: (frames, None), or (0, why the audio is unusable)."""
    try:
        if len(raw) == 0:
            return 0, "audio member is empty"
        n = _decode_pcm16_wav(raw, out, crop) if bytes(raw[:4]) == b"RIFF" else None
        integer = n is not None  # 16-bit PCM cannot hold NaN or inf
        if n is None:
            n = _decode_soundfile(raw, out, crop)
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, they are bad data
        return 0, _audio_problem(e)
    if n <= 0:
        return 0, "audio is empty (no samples)"
    if not integer and not np.isfinite(out[:n]).all():
        return 0, "audio holds non-finite samples (NaN or inf)"
    return n, None


# -- duration batching (thesis §5.2.3) ----------------------------------------------------


class DurationBatcher:
    """Streaming duration-budget batcher over a length-sorted priority queue (thesis §5.2.3).

    Items are pushed with their length and kept sorted. Once ``bucket_buffer`` items are
    queued, the batcher looks at every run of neighbouring lengths that fills the budget —
    items are added while ``len(batch) * longest <= budget``, so padding counts against
    the budget as in nanow2v2's ``MaxTokenBucketizer`` — and takes the run holding the most
    real audio. If even that run pads more than ``target_padding`` the batcher waits for
    more items, up to ``max_queue``: queued items are metadata only (no audio), so a deeper
    queue costs nothing and cuts padding from ~12 % to ~3 % on shuffled LibriSpeech-like
    lengths. ``target_padding=1.0, max_queue=bucket_buffer`` gives the plain fixed queue.

    An item longer than the budget forms a batch on its own. ``max_span`` limits
    longest − shortest within a batch: ``"split"`` never builds a wider batch (the rest
    stays queued, nothing is lost); ``"drop"`` builds batches ignoring the span and
    discards those that are too wide (as the thesis does), counting them in ``dropped``.
    """

    def __init__(self, budget: float, *, bucket_buffer: int = 300, max_span: float | None = None,
                 span_policy: str = "split", target_padding: float = 0.03,
                 max_queue: int | None = None):
        if budget <= 0:
            raise ValueError("the batch budget must be positive")
        if span_policy not in SPAN_POLICIES:
            raise ValueError(f"span_policy must be one of {SPAN_POLICIES}, not {span_policy!r}")
        self.budget = float(budget)
        self.bucket_buffer = max(1, int(bucket_buffer))
        self.max_queue = max(self.bucket_buffer,
                             int(max_queue) if max_queue is not None
                             else max(1000, 4 * self.bucket_buffer))
        self.target_padding = float(target_padding)
        self.max_span = None if max_span is None else float(max_span)
        self.policy = span_policy
        self._lengths: list[tuple[float, int]] = []  # sorted (length, arrival) keys
        self._items: list = []  # items in the same order
        self._seq = 0
        self._wait = 0  # pushes to skip before trying again after a rejected batch
        self.dropped = 0  # items discarded by the "drop" policy

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item, length: float) -> list[list]:
        """Queue ``item``; return the batches (0 or more) that became ready."""
        k = (float(length), self._seq)
        self._seq += 1
        i = bisect.bisect_right(self._lengths, k)
        self._lengths.insert(i, k)
        self._items.insert(i, item)
        out: list[list] = []
        if self._wait > 0 and len(self._items) < self.max_queue:
            self._wait -= 1
            return out
        while len(self._items) >= self.bucket_buffer:
            b = self._take(final=False)
            if b is None:  # no batch good enough yet: wait for a few more items
                self._wait = max(1, self.bucket_buffer // 10)
                break
            if b:
                out.append(b)
        return out

    def flush(self) -> list[list]:
        """Empty the queue into batches (end of an epoch)."""
        out = []
        while self._items:
            b = self._take(final=True)
            if b:
                out.append(b)
        self._wait = 0
        return out

    def _windows(self):
        """For each start i in the sorted queue: count, real length, padding, cut by queue end."""
        L = np.fromiter((x[0] for x in self._lengths), dtype=np.float64, count=len(self._lengths))
        n = len(L)
        cs = np.concatenate(([0.0], np.cumsum(L)))
        i = np.arange(n)
        lo = np.ones(n, dtype=np.int64)
        hi = n - i
        span = self.max_span if (self.policy == "split" and self.max_span is not None) else np.inf
        # Largest count c with c * L[i+c-1] <= budget (and the span rule): monotone in c,
        # so a vectorised binary search over all starts at once.
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi + 1) // 2
            j = np.minimum(i + mid - 1, n - 1)
            ok = (mid * L[j] <= self.budget) & (L[j] - L[i] <= span)
            lo = np.where(active & ok, mid, lo)
            hi = np.where(active & ~ok, mid - 1, hi)
        j = i + lo - 1
        real = cs[j + 1] - cs[i]
        longest = L[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            pad = np.where(longest > 0, 1.0 - real / (lo * longest), 0.0)
        return lo, real, pad, (i + lo == n)

    def _take(self, final: bool) -> list | None:
        """Remove and return the best batch; None when it is better to wait."""
        count, real, pad, cut = self._windows()
        score = real - 1e-9 * pad  # most real audio; less padding breaks ties
        if not final and not cut.all():
            score = np.where(cut, -np.inf, score)  # a run cut short by the queue end may grow
        b = int(np.argmax(score))
        if (not final and pad[b] > self.target_padding and len(self._items) < self.max_queue):
            return None
        k = int(count[b])
        lens = self._lengths[b:b + k]
        batch = self._items[b:b + k]
        del self._items[b:b + k], self._lengths[b:b + k]
        if (self.policy == "drop" and self.max_span is not None
                and lens[-1][0] - lens[0][0] > self.max_span):
            self.dropped += len(batch)
            return []
        return batch


def duration_batches(lengths_seconds: Sequence[float], batch_seconds: float, *,
                     bucket_buffer: int = 300, max_span_seconds: float | None = 10.0,
                     span_policy: str = "split", target_padding: float = 0.03,
                     max_queue: int | None = None) -> list[list[int]]:
    """Batch items by duration: the pure core of the reader, usable on any list of items.

    ``lengths_seconds[i]`` is item ``i``'s length; items enter the priority queue in the
    given order (shuffle first if wanted). Returns batches as lists of item indices; each
    batch satisfies ``len(batch) * max(length) <= batch_seconds`` unless it is a single
    item longer than the budget. With ``span_policy="split"`` every item appears exactly
    once; with ``"drop"`` batches wider than ``max_span_seconds`` are left out.
    ``target_padding`` / ``max_queue``: see ``DurationBatcher``.
    """
    b = DurationBatcher(batch_seconds, bucket_buffer=bucket_buffer, max_span=max_span_seconds,
                        span_policy=span_policy, target_padding=target_padding,
                        max_queue=max_queue)
    out: list[list[int]] = []
    for i, length in enumerate(lengths_seconds):
        out.extend(b.push(i, float(length)))
    out.extend(b.flush())
    return out


# -- the stream ---------------------------------------------------------------------------


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    r, w = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    elif "WORLD_SIZE" in os.environ:  # torchrun sets these before init_process_group
        r, w = int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return (r if rank is None else int(rank)), (w if world_size is None else int(world_size))


def consumer_plan(shards: Sequence[str], consumer: int, consumers: int, epoch: int, seed: int,
                  shuffle: bool = True) -> tuple[list[str], list[str]]:
    """This consumer's whole shards and the shards it shares by sample index, for an epoch."""
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(order))
        order = [order[i] for i in perm]
    whole = len(order) // consumers * consumers
    return order[consumer:whole:consumers], order[whole:]


def _check_transform_lengths(transform, batch_seconds: float, max_utterance_seconds: float) -> None:
    """A length-growing transform cuts its output to its own budget: it must be the stream's."""
    for name, ours in (("batch_seconds", batch_seconds),
                       ("max_utterance_seconds", max_utterance_seconds)):
        theirs = getattr(transform, name, None)
        if theirs is not None and abs(float(theirs) - float(ours)) > 1e-9:
            raise ValueError(f"the transform {transform!r} fits its output to {name}={theirs:g} "
                             f"but the stream uses {ours:g}: give both the same {name}")


class ShardBatchStream(torch.utils.data.IterableDataset):
    """Batches of utterances from tar shards, split over DDP ranks and DataLoader workers.

    Args:
        shards: a directory, glob, or list of shard paths (see ``list_shards``).
        batch_seconds: budget per batch, padding included (``len(batch) * longest``).
        seed: seeds shard order, sample shuffling, cropping and the transform's rng.
        rank, world_size: DDP position; default from ``torch.distributed`` / torchrun env.
        infinite: loop over epochs forever (training); else one epoch (validation).
        shuffle: shuffle shards and samples (off: file order, for evaluation).
        shuffle_buffer: sample shuffle buffer size (250 as nanow2v2).
        bucket_buffer: priority-queue size of the duration batcher (50 as nanow2v2's SSL).
        max_utterance_seconds: longer utterances are randomly cropped to this.
        max_span_seconds, span_policy: see ``DurationBatcher`` (default split at 10 s).
        transform: ``f(utts, rng) -> utts`` applied before collation (the online simulation).
            A transform with ``length_growth`` g (concatenation: 2) gets batches formed on
            ``batch_seconds / g`` of utterances cropped to ``min(max_utterance_seconds,
            batch_seconds / g)``, so that what it returns still fits ``batch_seconds``.
        start_batch: skip this many batches of this rank's stream (exact resume; exact for
            an infinite stream — DataLoader workers are read round-robin).
        target_padding, max_queue: let the batcher's queue grow while no batch pads less
            than ``target_padding`` (see ``DurationBatcher``).
    """

    def __init__(self, shards, batch_seconds: float, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, infinite: bool = True, shuffle: bool = True,
                 shuffle_buffer: int = 250, bucket_buffer: int = 50,
                 max_utterance_seconds: float = 30.0, max_span_seconds: float | None = 10.0,
                 span_policy: str = "split",
                 transform: Callable[[list[Utterance], np.random.Generator], list[Utterance]]
                 | None = None,
                 start_batch: int = 0, target_padding: float = 0.03,
                 max_queue: int | None = None):
        super().__init__()
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shards found in {shards}")
        if batch_seconds <= 0:
            raise ValueError("batch_seconds must be positive")
        if span_policy not in SPAN_POLICIES:
            raise ValueError(f"span_policy must be one of {SPAN_POLICIES}, not {span_policy!r}")
        self.batch_seconds = float(batch_seconds)
        self.seed = int(seed)
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.infinite = infinite
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.bucket_buffer = max(1, int(bucket_buffer))
        self.length_growth = float(getattr(transform, "length_growth", 1.0) or 1.0)
        if self.length_growth != 1.0:
            _check_transform_lengths(transform, self.batch_seconds, max_utterance_seconds)
        # An utterance must fit a batch on its own, so cap it at the budget too.
        self.max_frames = int(min(max_utterance_seconds, self.batch_seconds / self.length_growth)
                              * SAMPLE_RATE)
        self.max_span_seconds = max_span_seconds
        self.span_policy = span_policy
        self.transform = transform
        self.start_batch = int(start_batch)
        self.target_padding = target_padding
        self.max_queue = max_queue
        self.epoch = 0  # first epoch; set_epoch() changes it for finite streams
        self.worker_override: tuple[int, int] | None = None  # (worker, num_workers) for tests

    def set_epoch(self, epoch: int) -> None:
        """Use a different shuffle for the next pass (finite streams)."""
        self.epoch = int(epoch)

    def _worker(self) -> tuple[int, int]:
        """(virtual worker, workers). The DataLoader reads workers round-robin from worker 0,
        so after skipping ``start_batch`` batches worker 0 must play the part of worker
        ``start_batch % workers`` for the resumed order to match the original one."""
        if self.worker_override is not None:
            w, n = self.worker_override
        else:
            info = torch.utils.data.get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
        return (w + self.start_batch) % n, n

    # records --------------------------------------------------------------------------

    def _epoch_records(self, epoch: int, consumer: int, consumers: int,
                       rng: np.random.Generator, events: list[dict]) -> Iterator[_Record]:
        """This consumer's records of an epoch; its skip events are appended to ``events``."""
        whole, shared = consumer_plan(self.shards, consumer, consumers, epoch, self.seed,
                                      self.shuffle)
        for path in whole:
            yield from read_shard_records(path, events.append)
        i = 0

        def ours(event: dict) -> None:  # every consumer reads a shared shard: one reports
            if i % consumers == consumer:
                events.append(event)

        for path in shared:
            for rec in read_shard_records(path, ours):
                if i % consumers == consumer:
                    yield rec
                i += 1

    def _shuffled(self, records: Iterator[_Record], rng: np.random.Generator) -> Iterator[_Record]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from records
            return
        buf: list[_Record] = []
        for rec in records:
            if len(buf) < self.shuffle_buffer:
                buf.append(rec)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], rec = rec, buf[j]
            yield rec
        order = rng.permutation(len(buf))
        for j in order:
            yield buf[j]

    def _crop(self, rec: _Record, rng: np.random.Generator) -> _Record:
        if rec.num_frames > self.max_frames:
            rec.crop = int(rng.integers(rec.num_frames - self.max_frames + 1)) if self.shuffle else 0
            rec.num_frames = self.max_frames
        return rec

    def record_batches(self) -> Iterator[list[_Record]]:
        """This consumer's batches of undecoded records (what ``__iter__`` decodes)."""
        worker, workers = self._worker()
        consumers = self.world_size * workers
        consumer = self.rank * workers + worker
        epoch = self.epoch
        events: list[dict] = []  # skip events not handed out yet
        while True:
            rng = np.random.default_rng([self.seed, epoch, consumer, consumers])
            batcher = DurationBatcher(self.batch_seconds / self.length_growth * SAMPLE_RATE,
                                      bucket_buffer=self.bucket_buffer,
                                      max_span=None if self.max_span_seconds is None
                                      else self.max_span_seconds * SAMPLE_RATE,
                                      span_policy=self.span_policy,
                                      target_padding=self.target_padding,
                                      max_queue=self.max_queue)
            emitted = 0
            records = self._epoch_records(epoch, consumer, consumers, rng, events)
            for rec in self._shuffled(records, rng):
                rec = self._crop(rec, rng)
                for b in batcher.push(rec, rec.num_frames):
                    emitted += 1
                    yield _RecordBatch(b, events)
            for b in batcher.flush():
                emitted += 1
                yield _RecordBatch(b, events)
            all_bad = emitted == 0 and bool(events)
            if events and (all_bad or not self.infinite):
                # damage after the last batch of a pass, or a pass in which every utterance was
                # bad: an empty batch hands the events on (the consumer's limit must see them)
                yield _RecordBatch([], events)
            if not self.infinite:
                return
            if emitted == 0 and not all_bad:  # looping on would hang the DataLoader (and DDP)
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} of {consumers} data consumers got no "
                    f"utterances from {len(self.shards)} shards: the data set has fewer "
                    f"utterances than ranks × workers (or span_policy='drop' drops them all)")
            epoch += 1

    # decoding -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = self._worker()
        consumer = self.rank * workers + worker
        # Batch b of this rank comes from worker b % workers (DataLoader's round-robin).
        skip = max(0, (self.start_batch - worker + workers - 1) // workers)
        source = _AudioSource()
        try:
            for index, recs in enumerate(self.record_batches()):
                if index < skip:
                    continue
                skipped = list(recs.skipped)
                if self.transform is None:
                    batch = self._decode_batch(recs, source, skipped)
                else:
                    rng = np.random.default_rng([self.seed, 0x7A, consumer, workers, index])
                    utts = [u for u in (self._decode_one(r, source, skipped) for r in recs)
                            if u is not None]
                    batch = collate(self.transform(utts, rng) if utts else [])
                batch.skipped = skipped
                yield batch
        finally:
            source.close()

    def _decode_one(self, rec: _Record, source: _AudioSource,
                    skipped: list[dict]) -> Utterance | None:
        out = np.zeros(rec.num_frames, dtype=np.float32)
        n, problem = _decode_record(source, rec, out)
        if problem is not None:
            skipped.append(skip_event(rec.shard, rec.key, problem))
            return None
        return Utterance(rec.key, out[:n], rec.meta)

    def _decode_batch(self, recs: list[_Record], source: _AudioSource,
                      skipped: list[dict]) -> Batch:
        """Decode straight into the padded batch tensor (no per-utterance copies); a bad
        utterance's row is reused by the next one, and the tensor cut to the rows kept."""
        longest = max((r.num_frames for r in recs), default=0)
        audio = torch.empty((len(recs), longest), dtype=torch.float32)
        arr = audio.numpy()
        kept, lengths = [], []
        for rec in recs:
            row = len(kept)
            n, problem = _decode_record(source, rec, arr[row, : rec.num_frames])
            if problem is not None:
                skipped.append(skip_event(rec.shard, rec.key, problem))
                continue
            arr[row, n:] = 0.0
            kept.append(rec)
            lengths.append(n)
        if len(kept) < len(recs):
            audio = audio[: len(kept), : max((r.num_frames for r in kept), default=0)].contiguous()
        return Batch(audio, torch.tensor(lengths, dtype=torch.int64), [r.key for r in kept],
                     [r.meta for r in kept])


def make_loader(stream: ShardBatchStream, num_workers: int = 0, *, pin_memory: bool = False,
                prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over a ``ShardBatchStream`` (batches are formed in the workers)."""
    kwargs = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = stream.infinite
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory, **kwargs)


__all__ = [
    "Batch", "DurationBatcher", "ShardBatchStream", "Utterance", "collate", "consumer_plan",
    "duration_batches", "list_shards", "make_loader", "padding_fraction", "read_shard_records",
]
