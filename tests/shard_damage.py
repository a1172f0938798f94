"""Damaging real shards the ways failing disks, partial copies and wrong folders do.

Helpers for the bad-data tests (not a test module): every damage keeps a valid tar around the
damaged member unless the damage is the tar itself (a truncated copy).
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from corpora import sample_shards

SR = 16_000


def speech_shards(out: str | Path, n: int = 40, per_shard: int = 10) -> str:
    """``n`` pieces (2–6 s) of a real two-speaker recording in shards of ``per_shard``."""
    return sample_shards(out, n, "sp", per_shard)


def tar_members(path: str | Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every member, in archive order."""
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]


def write_tar(path: str | Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar of ``members`` in the given order (fixed metadata, like `corpus shard`)."""
    path = Path(path)
    if path.exists():
        path.chmod(0o644)
        path.unlink()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1672527600, 0o444
            tf.addfile(ti, io.BytesIO(data))
    return path


def keys_of(path: str | Path) -> list[str]:
    """Utterance keys of a shard, in archive order."""
    out: list[str] = []
    for name, _ in tar_members(path):
        key = name.split(".", 1)[0]
        if key not in out:
            out.append(key)
    return out


def garbage(n: int, seed: int = 0) -> bytes:
    """``n`` random bytes that no audio decoder recognises."""
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return b"\x00junk" + data[5:]


def float_wav_with_nan(frames: int) -> bytes:
    """A valid 32-bit float WAV of speech-like noise with NaN samples in it."""
    x = (np.random.default_rng(1).standard_normal(frames) * 0.1).astype(np.float32)
    x[frames // 3: frames // 3 + 50] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def replace_member(shard: str | Path, member: str, data: bytes) -> None:
    """Rewrite ``shard`` with the bytes of ``member`` (e.g. ``"key.wav"``) replaced."""
    members = tar_members(shard)
    names = [n for n, _ in members]
    assert member in names, (member, names[:6])
    write_tar(shard, [(n, data if n == member else d) for n, d in members])


def truncate_inside(shard: str | Path, key: str) -> int:
    """Cut ``shard`` in the middle of the audio member of ``key`` (a partial copy); returns the size."""
    with tarfile.open(shard) as tf:
        m = next(m for m in tf if m.name.startswith(f"{key}.") and not m.name.endswith(".json"))
        cut = m.offset_data + m.size // 2
    Path(shard).chmod(0o644)
    with open(shard, "r+b") as fh:
        fh.truncate(cut)
    return cut


def copy_shards(src: str | Path, dst: str | Path) -> Path:
    """A writable copy of a shard folder (shards are written read-only)."""
    dst = Path(dst)
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dst


def damage_folder(src: str | Path, dst: str | Path) -> dict:
    """A copy of a shard folder with one of each damage.

    First shard: one garbage `.wav`, one float WAV with NaN samples. Second shard: one empty
    audio member, one corrupt `.json`. Third shard: truncated in the middle of its 4th
    utterance's audio (the 3 before it stay readable). Returns the folder, the damaged keys
    with the kind of damage, the truncated shard and the keys every reader must still see.
    """
    dst = copy_shards(src, dst)
    shards = sorted(dst.glob("*.tar"))
    assert len(shards) >= 3, shards
    first, second, third = shards[:3]
    k1, k2 = keys_of(first)[1:3]
    k3, k4 = keys_of(second)[0:2]
    frames = dict(tar_members(first))
    replace_member(first, f"{k1}.wav", garbage(len(frames[f"{k1}.wav"])))
    import json

    n = json.loads(frames[f"{k2}.json"])["num_frames"]
    replace_member(first, f"{k2}.wav", float_wav_with_nan(n))
    replace_member(second, f"{k3}.wav", b"")
    replace_member(second, f"{k4}.json", b'{"id": "broken", "num_frames": 12')
    third_keys = keys_of(third)
    truncate_inside(third, third_keys[3])
    bad = {k1: "decode", k2: "finite", k3: "empty", k4: "json"}
    all_keys = [k for p in shards for k in (keys_of(p) if p != third else third_keys)]
    lost = set(third_keys[3:])
    good = [k for k in all_keys if k not in bad and k not in lost]
    return {"dir": str(dst), "bad": bad, "truncated": third.name, "lost": lost, "good": good,
            "all": all_keys}


def wrong_folder(src: str | Path, dst: str | Path, what: str = "audio") -> Path:
    """A folder of valid tars in which every audio member (``what="audio"``) or every json
    (``what="json"``) is garbage: the right layout, the wrong content."""
    dst = copy_shards(src, dst)
    for shard in sorted(dst.glob("*.tar")):
        members = tar_members(shard)
        out = []
        for i, (name, data) in enumerate(members):
            is_json = name.endswith(".json")
            if (what == "json") == is_json:
                data = garbage(len(data), seed=i) if not is_json else b"\x00\x01 not json"
            out.append((name, data))
        write_tar(shard, out)
    return dst
