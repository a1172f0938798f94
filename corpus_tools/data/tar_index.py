"""Find tar shards and read one shard's index: tar headers and ``.json`` members, audio left on disk.

What it reads: tar shards (plain, or gzip/bzip2/xz compressed) whose members are grouped
by key as WebDataset does (the key is the member name up to the first dot of its base
name), with ``.wav`` or ``.flac`` audio at 16 kHz and an optional ``.json``. So it reads
``corpus shard`` output in both formats and nanow2v2's own shards. The other way round,
nanow2v2's loader decodes ``.wav`` members only: it reads our wav shards, not flac ones
(the ``webdataset`` library reads both).

Damage is skipped, never fatal (``corpus_tools.bad_data``): a sample whose json does not
parse, whose audio member is missing or empty, or whose frame count is unknown is left out,
and a shard that is truncated or unreadable past some point ends there (what precedes the
damage is kept). Each is reported as a skip event.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import mmap
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from braceexpand import braceexpand  # a webdataset dependency

from corpus_tools.bad_data import SHARD, describe, short_reason, skip_event
from corpus_tools.data.members import (AUDIO_EXTENSIONS, EMPTY_MEMBER, audio_problem, member_info,
                                       read_member)

_log = logging.getLogger(__name__)


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


# -- reading one shard's index ------------------------------------------------------------


@dataclass
class ShardRecord:
    """An utterance of a shard whose audio has not been decoded yet: its json and where its
    audio member lies."""

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
    _log.warning("skipped %s", describe(event))


class _Sample:
    """The members of one key while a shard is read: json, audio and what is wrong with them."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self.meta: dict | None = None
        self.audio: tuple | None = None  # (offset, size, data)
        self.problem: str | None = None

    def add(self, ext: str, offset: int, size: int, read: Callable[[], bytes]) -> None:
        """One member: ``offset`` of its data in the shard (-1: not seekable, keep the bytes
        ``read()`` gives), its ``size``."""
        last = ext.rsplit(".", 1)[-1]
        if last == "json":
            raw = read()  # a cut member raises here: the shard is damaged
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
            self.audio = (offset, size, None) if offset >= 0 else (-1, size, read())

    def inside(self, end: int | None) -> bool:
        """Whether the audio member lies wholly inside a file of ``end`` bytes."""
        return end is None or self.audio is None or self.audio[0] + self.audio[1] <= end

    def record(self, report: Callable[[dict], None]) -> ShardRecord | None:
        """The record, or None (reported when the sample had json or audio but is unusable)."""
        if self.audio is None:
            if self.meta is not None or self.problem is not None:
                report(skip_event(self.path, self.key, self.problem or "has no audio member"))
            return None
        if self.problem is None and self.audio[1] == 0:
            self.problem = EMPTY_MEMBER
        if self.problem is None:
            try:
                return _make_record(self.path, self.key, self.meta, self.audio)
            except _Unusable as e:
                self.problem = str(e)
            except Exception as e:  # noqa: BLE001 - any failure to read a header is bad data
                self.problem = audio_problem(e)
        report(skip_event(self.path, self.key, self.problem))
        return None


def read_shard_records(path: str, on_bad: Callable[[dict], None] | None = None) -> Iterator[ShardRecord]:
    """Yield one record per sample of a tar shard, reading only headers and json.

    Damage never raises. A sample whose json does not parse, whose audio member is empty or
    missing, or whose audio header cannot be read (json without ``num_frames``) is skipped; a
    tar that cannot be read past some point (cut short, corrupt, not a tar) ends there, and
    the samples before the damage are kept. Each is reported to ``on_bad`` as a skip event
    (``corpus_tools.bad_data.skip_event``; default: a logged warning).
    """
    report = on_bad or _warn_skip
    if path.endswith(".tar"):
        with _intact_members(path) as found:
            if found is not None:  # every header checked: read without tarfile
                yield from _records(path, *found, report)
                return
    yield from _tarfile_records(path, report)


def _tarfile_records(path: str, report: Callable[[dict], None]) -> Iterator[ShardRecord]:
    """:func:`read_shard_records` through tarfile: any shard, compressed, odd or damaged."""
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
                sample.add(ext, m.offset_data if seekable else -1, m.size,
                           lambda m=m: tf.extractfile(m).read())
            if seekable and not ends_cleanly(tf.fileobj, tf.offset, end):
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


# -- intact plain tars, without tarfile ---------------------------------------------------------
#
# tarfile spends ~20 µs on each member header (every field parsed, a TarInfo built), more than
# the json it precedes. A plain tar whose headers are all of the simple kind our writer (and
# most) makes is read here instead: its headers are found in one pass, then checked together in
# numpy as tarfile checks each (checksum, numeric fields), and the archive's end as
# read_shard_records checks it. Anything else (a PAX or GNU header, a link, a cut or damaged
# archive) goes to tarfile, which reads it and reports the damage as before.

_ZERO_BLOCK = bytes(_TAR_BLOCK)
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156), (329, 337), (337, 345))
_DIR_TYPE = ord("5")
_KINDS = (ord("0"), 0, _DIR_TYPE)  # regular file (ustar, old tar), folder


@contextlib.contextmanager
def _intact_members(path: str) -> Iterator[tuple[mmap.mmap, list[tuple[str, int, int]]] | None]:
    """``(the shard mapped, [(name, data offset, size)] of its files)`` when every header is
    plain and sound and the archive ends cleanly; None when tarfile must read it."""
    try:
        fh = open(path, "rb")
    except OSError:
        yield None
        return
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 2 * _TAR_BLOCK:
            yield None
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            members = _scan_headers(mm, size)
            yield (mm, members) if members is not None else None


def _scan_headers(mm: mmap.mmap, size: int) -> list[tuple[str, int, int]] | None:
    """Walk the headers by their size fields, then check them all (:func:`_sound_headers`);
    None at anything that is not a plain, sound file or folder header."""
    offsets, sizes, off = [], [], 0
    while True:
        if off + _TAR_BLOCK > size:
            return None  # cut inside a header
        if mm[off] == 0:  # an empty name: the end-of-archive block, or nothing we read
            if mm[off:off + _TAR_BLOCK] == _ZERO_BLOCK:
                break
            return None
        try:  # 11 octal digits and a NUL, as tar writers write it; anything else is parsed as tarfile does
            n = int(mm[off + 124:off + 135], 8) if mm[off + 135] == 0 else _octal(mm[off + 124:off + 136])
        except ValueError:
            return None
        data = off + _TAR_BLOCK
        if n < 0 or data + n > size:
            return None  # cut inside a member
        offsets.append(off)
        sizes.append(n)
        off = data + -(-n // _TAR_BLOCK) * _TAR_BLOCK
    if off == 0 or not ends_cleanly(mm, off, size):
        return None
    headers = _sound_headers(mm, size, offsets, sizes)
    if headers is None:
        return None
    members = []
    for off, n, hdr in zip(offsets, sizes, headers):
        try:
            name = bytes(hdr[:100]).split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if hdr[156] != _DIR_TYPE and not (hdr[156] == 0 and name.endswith("/")):  # tarfile's folders
            members.append((name, off + _TAR_BLOCK, n))
    return members


def _octal(field: bytes) -> int:
    """A numeric header field as tarfile's ``nti`` reads it (not base-256: those go to tarfile)."""
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _sound_headers(mm: mmap.mmap, size: int, offsets: list[int], sizes: list[int]) -> np.ndarray | None:
    """The headers (one row each) when each is what tarfile accepts as a plain file or folder:
    type ``0``, NUL or ``5`` (a folder of no bytes), no ustar prefix, every numeric field octal
    (digits, then spaces or NULs: stricter than tarfile, which is fine here), the checksum right."""
    raw = np.frombuffer(mm, dtype=np.uint8)
    try:
        blocks = raw[:size - size % _TAR_BLOCK].reshape(-1, _TAR_BLOCK)
        headers = blocks[np.asarray(offsets, dtype=np.int64) // _TAR_BLOCK]  # a copy: k × 512 bytes
        del blocks
    finally:
        del raw  # the map cannot close while an array views it
    kind = headers[:, 156]
    if not (np.isin(kind, _KINDS).all() and not headers[:, 345:500].any()
            and not ((kind == _DIR_TYPE) & (np.asarray(sizes) != 0)).any()):
        return None
    for lo, hi in _NUMERIC_FIELDS:
        field = headers[:, lo:hi]
        digit = (field >= ord("0")) & (field <= ord("7"))
        pad = (field == ord(" ")) | (field == 0)
        if not (digit | pad).all() or (np.logical_or.accumulate(pad, axis=1) & digit).any():
            return None
    chk = headers[:, 148:156]
    digit = (chk >= ord("0")) & (chk <= ord("7"))
    places = digit.sum(axis=1, keepdims=True) - 1 - np.arange(8)
    stated = (np.where(digit, chk.astype(np.int64) - ord("0"), 0) << (3 * np.maximum(places, 0))).sum(axis=1)
    actual = headers.sum(axis=1, dtype=np.int64) - chk.sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    return headers if (stated == actual).all() else None


def _records(path: str, mm: mmap.mmap, members: list[tuple[str, int, int]],
             report: Callable[[dict], None]) -> Iterator[ShardRecord]:
    """The records of an intact shard's members, grouped by key as the tarfile loop does."""
    sample: _Sample | None = None
    for name, offset, size in members:
        k, ext = _split_member(name)
        if sample is not None and k != sample.key:
            rec = sample.record(report)
            sample = None
            if rec is not None:
                yield rec
        if sample is None:
            sample = _Sample(path, k)
        sample.add(ext, offset, size, lambda o=offset, n=size: mm[o:o + n])
    if sample is not None:
        rec = sample.record(report)
        if rec is not None:
            yield rec


def ends_cleanly(fh: BinaryIO, offset: int, size: int) -> bool:
    """Whether a tar of ``size`` bytes, read to its last member (``offset``: where tarfile
    stopped), ends in zero blocks. A copy cut at (or inside) a member header does not, and
    tarfile stops there without an error."""
    if offset >= size:
        return False
    fh.seek(offset)
    return not fh.read(min(size - offset, 2 * _TAR_BLOCK)).strip(b"\0")


class _Unusable(ValueError):
    """A sample that reads but cannot be used; the message is the reason."""


def _make_record(path: str, key: str, meta: dict | None, audio: tuple) -> ShardRecord:
    offset, size, data = audio
    meta = dict(meta or {})
    n = meta.get("num_frames")
    if n is None:  # no json (or an old one): read the audio header instead
        info = member_info(data if data is not None else read_member(path, offset, size))
        n = info.frames
        meta.setdefault("sample_rate", info.samplerate)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise _Unusable(f"json num_frames is {n!r}, not a number") from None
    if n <= 0:
        raise _Unusable(f"audio is empty ({n} frames)")
    meta.setdefault("num_frames", n)
    return ShardRecord(key=key, meta=meta, num_frames=n, shard=path, offset=offset, size=size, data=data)


