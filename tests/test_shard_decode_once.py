"""`corpus shard` on compressed sources decodes each recording once per group of shards.

The length-sorted plan spreads one recording's segments over many shards; cutting them one
by one meant one ffmpeg process per segment. The writer now decodes a compressed recording
whole (as the segment stage does, the decode its timestamps refer to) once per group of
shards written together and slices every segment of it; wav/flac keep their exact ranged
reads and their bytes. Reference writers here are the plain per-segment loops.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

import corpus_tools.shards.write as write
from corpus_tools import shards as sh
from corpus_tools.audio import SAMPLE_RATE, encode_audio, load_audio
from corpus_tools.shards.state import index_frame

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

REPO = Path(__file__).resolve().parents[1]
SPS = 4  # samples per shard: ~24 segments → 6 shards, each recording spread over several
# (suffix, sample rate, channels) of each recording: broadcast-like mp3 next to wav/flac
SOURCES = [(".mp3", 44100, 2), (".wav", 16000, 1), (".mp3", 22050, 1), (".flac", 44100, 2),
           (".mp3", 44100, 1)]


def _encode_mp3(wav: Path, mp3: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-b:a", "96k",
                    str(mp3)], check=True)


def make_manifest(root: Path, seconds: float = 4.0, seed: int = 0) -> pl.DataFrame:
    """Tones + noise, a few seconds per recording, cut into 0.3–1.2 s segments."""
    rng = np.random.default_rng(seed)
    rows = []
    for r, (suffix, sr, ch) in enumerate(SOURCES):
        t = np.arange(int(sr * seconds)) / sr
        x = 0.3 * np.sin(2 * np.pi * (180 + 70 * r) * t) + 0.03 * rng.standard_normal(t.size)
        x = np.stack([x, 0.5 * x], axis=1) if ch == 2 else x
        path = root / f"rec{r}{suffix}"
        if suffix == ".mp3":
            sf.write(root / f"rec{r}.src.wav", x.astype(np.float32), sr)
            _encode_mp3(root / f"rec{r}.src.wav", path)
        else:
            sf.write(path, x.astype(np.float32), sr)
        start, i = 0.0, 0
        while (d := float(rng.uniform(0.3, 1.2))) and start + d <= seconds:
            rows.append({"segment_id": f"rec{r}-{i:03d}", "recording_id": f"rec{r}",
                         "path": str(path), "start": start, "end": start + d, "duration": d,
                         "text": f"word {r} {i}", "speaker": "s", "method": "unit",
                         "language": "nl", "session": f"rec{r}"})
            start += d + float(rng.uniform(0.0, 0.2))
            i += 1
    return pl.DataFrame(rows)


def is_compressed(path: str) -> bool:
    return Path(path).suffix == ".mp3"


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.tar"))}


# -- reference writers: one segment at a time ------------------------------------------------


def fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.concatenate([x, np.zeros(n - len(x), np.float32)])


def ranged_cut(it: dict) -> np.ndarray:
    """The per-segment cut every source had before: a ranged decode of the segment."""
    n = it["num_frames"]
    return fit(load_audio(it["path"], it["start"], it["start"] + n / SAMPLE_RATE), n)


def sliced_cut(it: dict) -> np.ndarray:
    """A compressed source's cut now: the segment's samples of the whole-file decode."""
    first = int(round(it["start"] * SAMPLE_RATE))
    return fit(load_audio(it["path"])[first:first + it["num_frames"]], it["num_frames"])


def reference_shards(df: pl.DataFrame, out: Path, cut, fmt: str = "wav") -> pl.DataFrame:
    """Every planned shard written by ``write_one_shard`` from ``cut(item)``; the index."""
    markers = []
    for s in sh.plan_shards(df, samples_per_shard=SPS):
        items = [(it["key"], encode_audio(cut(it), SAMPLE_RATE, fmt), it["meta"]) for it in s.items]
        stats = sh.write_one_shard(out / s.name, items)
        markers.append({**stats, "shard_idx": s.index, "partial": s.partial, "format": fmt})
    return index_frame(markers)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pl.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("rec"))


@pytest.fixture(scope="module")
def mp3_rows(manifest) -> pl.DataFrame:
    return manifest.filter(pl.col("path").str.ends_with(".mp3"))


@pytest.fixture(scope="module")
def written(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    sh.write_shards(manifest, out, samples_per_shard=SPS, progress=False)
    return out


@pytest.fixture
def decodes(monkeypatch) -> list[tuple]:
    """Every ``load_audio`` call of the shard writer: (path, start, end)."""
    calls: list[tuple] = []
    orig = write.load_audio

    def counting(path, start=None, end=None, *args, **kw):
        calls.append((str(path), start, end))
        return orig(path, start, end, *args, **kw)

    monkeypatch.setattr(write, "load_audio", counting)
    return calls


def recordings_per_group(specs, group_size: int) -> Counter:
    """How many of the groups (``group_size`` consecutive shards) hold each mp3 recording."""
    groups = [specs[i:i + group_size] for i in range(0, len(specs), group_size)]
    return Counter(p for g in groups for p in {it["path"] for s in g for it in s.items}
                   if is_compressed(p))


# -- tests -----------------------------------------------------------------------------------


def test_plan_spreads_each_recording_over_shards(manifest):
    """The premise: a length-sorted plan puts one recording's segments in several shards."""
    specs = sh.plan_shards(manifest, samples_per_shard=SPS)
    spread = Counter(p for s in specs for p in {it["path"] for it in s.items})
    assert len(specs) >= 4 and min(spread.values()) >= 2
    # every shard shares an mp3 recording with another one, so the groups are simply runs of
    # consecutive shards
    assert all(any(is_compressed(it["path"]) and spread[it["path"]] > 1 for it in s.items)
               for s in specs)


def test_one_file_per_utterance_shards_are_written_alone(tmp_path):
    """A shard whose compressed recordings are in no other shard (Common Voice, MLS: a file
    per utterance) is written on its own, like a shard of wav files: one decode per file
    either way, and a shard written alone resumes at the finest grain."""
    rows = [{"segment_id": f"clip{i:03d}", "recording_id": f"clip{i:03d}",
             "path": str(tmp_path / f"clip{i:03d}.mp3"), "start": 0.0, "end": 1.0 + i / 10,
             "duration": 1.0 + i / 10, "text": "", "speaker": "s", "method": "import",
             "language": "nl", "session": "s"} for i in range(12)]
    specs = sh.plan_shards(pl.DataFrame(rows), samples_per_shard=SPS)
    groups, alone = write._groups(specs)
    assert groups == [] and alone == specs


def test_each_mp3_recording_is_decoded_once(mp3_rows, decodes, tmp_path):
    sh.write_shards(mp3_rows, tmp_path / "s", samples_per_shard=SPS, progress=False)
    assert Counter(p for p, _, _ in decodes) == Counter(set(mp3_rows["path"]))
    assert all(start is None and end is None for _, start, end in decodes)  # the whole file


def test_decoded_once_per_group_of_open_shards(manifest, written, decodes, tmp_path, monkeypatch):
    """With at most 2 shards open at once, an mp3 recording is decoded once per group that
    holds it; wav/flac segments are ranged reads; the bytes do not depend on the grouping."""
    monkeypatch.setattr(write, "MAX_OPEN_SHARDS", 2)
    sh.write_shards(manifest, tmp_path / "s", samples_per_shard=SPS, progress=False)
    specs = sh.plan_shards(manifest, samples_per_shard=SPS)
    whole = Counter(p for p, start, end in decodes if start is None and end is None)
    assert whole == recordings_per_group(specs, 2)
    ranged = [p for p, start, end in decodes if start is not None]
    assert len(ranged) == sum(not is_compressed(p) for p in manifest["path"])
    assert digest(tmp_path / "s") == digest(written)


def test_workers_decode_each_recording_once_per_group(manifest, written, decodes, tmp_path,
                                                      monkeypatch):
    """With ``workers`` the calling process writes a group and the pool decodes and encodes
    one recording's run of items per task: still one decode per recording and group.
    Threads stand in for the worker processes so that the decodes can be counted."""
    monkeypatch.setattr(write, "ProcessPoolExecutor",
                        lambda max_workers, mp_context: ThreadPoolExecutor(max_workers))
    monkeypatch.setattr(write, "MAX_OPEN_SHARDS", 2)
    sh.write_shards(manifest, tmp_path / "s", samples_per_shard=SPS, progress=False, workers=3)
    specs = sh.plan_shards(manifest, samples_per_shard=SPS)
    whole = Counter(p for p, start, end in decodes if start is None and end is None)
    assert whole == recordings_per_group(specs, 2)
    assert digest(tmp_path / "s") == digest(written)


def test_wav_and_flac_bytes_and_index_unchanged(manifest, tmp_path):
    """Soundfile sources: shards and index byte-identical to the per-segment writer."""
    rows = manifest.filter(~pl.col("path").str.ends_with(".mp3"))
    want = reference_shards(rows, tmp_path / "ref", ranged_cut)
    got = sh.write_shards(rows, tmp_path / "s", samples_per_shard=SPS, progress=False)
    assert digest(tmp_path / "s") == digest(tmp_path / "ref")
    assert got.equals(want)
    assert pl.read_parquet(tmp_path / "s" / "shards.parquet").equals(want)


def test_mp3_segments_are_slices_of_the_whole_file_decode(manifest, written, tmp_path):
    """Mixed sources: mp3 segments cut from the whole-file decode, the rest ranged reads."""
    want = reference_shards(manifest, tmp_path / "ref",
                            lambda it: sliced_cut(it) if is_compressed(it["path"]) else ranged_cut(it))
    assert digest(written) == digest(tmp_path / "ref")
    assert pl.read_parquet(written / "shards.parquet").equals(want)


@pytest.mark.slow
def test_flac_format_and_workers(manifest, tmp_path):
    """``--format flac`` and a pool of 2 processes: the same bytes as one process."""
    one = sh.write_shards(manifest, tmp_path / "one", samples_per_shard=SPS, fmt="flac",
                          progress=False)
    two = sh.write_shards(manifest, tmp_path / "two", samples_per_shard=SPS, fmt="flac",
                          progress=False, workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two") and one.equals(two)


KILLED_WRITER = """
import os, signal, sys
import polars as pl
import corpus_tools.shards.write as w
w.MAX_OPEN_SHARDS = 2
encode, calls, kill_at = w.encode_audio, [0], int(sys.argv[3])
def encode_then_die(*a, **k):
    calls[0] += 1
    if calls[0] == kill_at:  # inside the second group of shards
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(*a, **k)
w.encode_audio = encode_then_die
w.write_shards(pl.read_parquet(sys.argv[1]), sys.argv[2], samples_per_shard=%d, progress=False)
""" % SPS


@pytest.mark.slow
def test_resume_after_a_killed_write(manifest, written, decodes, tmp_path, monkeypatch):
    """SIGKILL inside the second group: the first group's shards are final and kept, the
    second's are only temp files; the rerun rewrites the rest and ends with the same bytes."""
    specs = sh.plan_shards(manifest, samples_per_shard=SPS)
    first_group = [s.name for s in specs[:2]]
    src, out = tmp_path / "segs.parquet", tmp_path / "killed"
    manifest.write_parquet(src)
    kill_at = sum(len(s.items) for s in specs[:2]) + 3
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(src), str(out), str(kill_at)],
                          cwd=REPO, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("*.tar")) == first_group  # never a half tar
    assert sh.temp_path(out / specs[2].name).exists()
    assert not (out / "shards.parquet").exists()
    kept = {n: (out / n).stat().st_mtime_ns for n in first_group}

    monkeypatch.setattr(write, "MAX_OPEN_SHARDS", 2)
    index = sh.write_shards(manifest, out, samples_per_shard=SPS, progress=False)
    assert digest(out) == digest(written)
    assert index.equals(pl.read_parquet(written / "shards.parquet"))
    assert {n: (out / n).stat().st_mtime_ns for n in first_group} == kept
    assert not list(out.glob(".*.tmp"))
    whole = Counter(p for p, start, end in decodes if start is None)
    assert whole == recordings_per_group(specs[2:], 2)  # only the unfinished groups decode
