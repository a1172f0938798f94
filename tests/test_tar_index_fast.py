"""The reader's shard index reads intact plain tars without tarfile (headers checked together
in numpy) and everything else through tarfile; both give the same records and the same skip
events, for intact shards and for every damage a disk or a partial copy does."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpora import sample_shards
from corpus_tools.data import tar_index as ti


def _wav(frames: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(frames, np.float32), 16_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT, folder: bool = False) -> str:
    with tarfile.open(path, "w", format=fmt) as tf:
        if folder:
            d = tarfile.TarInfo("sub")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1672527600, 0o444
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _members(n: int = 6, long: bool = False) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        key = f"{'x' * 120 if long and i == 2 else 'utt'}{i:03d}"
        meta = {"id": key, "key": key, "num_frames": 800 + i, "duration": (800 + i) / 16_000}
        out += [(f"{key}.json", json.dumps(meta).encode()), (f"{key}.wav", _wav(800 + i))]
    return out


def _both(path: str) -> tuple[list, list, list, list]:
    fast_events, slow_events = [], []
    fast = [dataclasses.asdict(r) for r in ti.read_shard_records(path, fast_events.append)]
    slow = [dataclasses.asdict(r) for r in ti._tarfile_records(path, slow_events.append)]
    return fast, fast_events, slow, slow_events


def _took_fast_path(path: str) -> bool:
    with ti._intact_members(path) as found:
        return found is not None


def test_intact_shards_skip_tarfile_and_read_the_same(tmp_path):
    written = sample_shards(tmp_path / "written", 7, "sp", 3)  # `corpus shard`'s own writer
    cases = ti.list_shards(written) + [
        _tar(tmp_path / "ustar.tar", _members()),
        _tar(tmp_path / "gnu.tar", _members(), fmt=tarfile.GNU_FORMAT),
        _tar(tmp_path / "folder.tar", [(f"sub/{n}", d) for n, d in _members()], folder=True)]
    for path in cases:
        assert _took_fast_path(path), path
        fast, fast_events, slow, slow_events = _both(path)
        assert fast == slow and fast_events == slow_events == [] and fast


def _damaged(tmp_path: Path) -> dict[str, str]:
    good = _tar(tmp_path / "good.tar", _members())
    raw = Path(good).read_bytes()
    cases = {"pax long name": _tar(tmp_path / "pax.tar", _members(long=True), fmt=tarfile.PAX_FORMAT),
             "gnu long name": _tar(tmp_path / "gnulong.tar", _members(long=True), fmt=tarfile.GNU_FORMAT)}
    members = _members()
    bad_json = [(n, b'{"id": "broken", "num_frames": 12' if n == "utt001.json" else d) for n, d in members]
    cases["json does not parse"] = _tar(tmp_path / "json.tar", bad_json)
    cases["empty audio"] = _tar(tmp_path / "empty.tar", [(n, b"" if n == "utt002.wav" else d) for n, d in members])
    no_frames = [(n, json.dumps({"id": "utt003"}).encode() if n == "utt003.json" else d) for n, d in members]
    cases["json without num_frames"] = _tar(tmp_path / "noframes.tar", no_frames)
    cases["no audio"] = _tar(tmp_path / "noaudio.tar", [m for m in members if m[0] != "utt004.wav"])
    cases["no json"] = _tar(tmp_path / "nojson.tar", [m for m in members if m[0] != "utt000.json"])

    def cut(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    with tarfile.open(good) as tf:
        infos = [m for m in tf]
    audio = infos[5]
    cases["cut inside audio"] = cut("cut-audio.tar", raw[:audio.offset_data + audio.size // 2])
    cases["cut inside a header"] = cut("cut-header.tar", raw[:infos[4].offset + 100])
    cases["no end marker"] = cut("no-end.tar", raw[:infos[-1].offset_data + 512])
    flipped = bytearray(raw)
    flipped[infos[3].offset + 5] ^= 1  # a name byte: the checksum no longer matches
    cases["bad checksum"] = cut("checksum.tar", bytes(flipped))
    size_field = bytearray(raw)
    size_field[infos[2].offset + 130] = ord("9")  # not octal
    cases["bad size field"] = cut("size.tar", bytes(size_field))
    cases["empty file"] = cut("zero.tar", b"")
    cases["not a tar"] = cut("text.tar", b"hello " * 400)
    cases["garbage after the end"] = cut("tail.tar", raw + b"\x01" * 700)
    return cases


def test_damaged_or_odd_shards_give_what_tarfile_gives(tmp_path):
    cases = _damaged(tmp_path)
    for what, path in cases.items():
        fast, fast_events, slow, slow_events = _both(path)
        assert fast == slow, what
        assert fast_events == slow_events, what
    tarfile_reads = {"pax long name", "gnu long name", "cut inside audio", "cut inside a header", "no end marker",
                     "bad checksum", "bad size field", "empty file", "not a tar"}
    assert {what for what, path in cases.items() if not _took_fast_path(path)} == tarfile_reads


@pytest.mark.parametrize("flip", range(0, 512, 7))
def test_any_flipped_header_byte_reads_as_tarfile_reads_it(tmp_path, flip):
    good = Path(_tar(tmp_path / "good.tar", _members(3)))
    raw = bytearray(good.read_bytes())
    raw[512 * 2 + flip] ^= 0x41  # the second member's header
    good.write_bytes(bytes(raw))
    fast, fast_events, slow, slow_events = _both(str(good))
    assert (fast, fast_events) == (slow, slow_events)
