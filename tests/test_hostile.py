"""Hostile and odd inputs through ingest → segment (sad, the real pyannote VAD) → shard →
verify: each gives a manifest row or a clear one-line error, never a traceback, never a
lost result (issue 8, item 4).

Read-only and full-disk targets are real: a read-only or tiny tmpfs mounted for the test
(root can mount here; elsewhere those tests say why they skip).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from corpus_tools import shards as sh
from corpus_tools.audio import load_audio, write_audio
from corpus_tools.cli import app
from corpus_tools.manifests import WorkDir, read_recordings, read_segments
from corpus_tools.samples import add_bad_files, music_files, pyannote_sample_dir

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

cli = CliRunner()
SR = 16_000

# recording stem → what it is; the folder and two names carry spaces and non-ASCII
SPEECH_FILES = ("Uitzending één — 20:00", "Uitzending één — 20_00", "telefoon 8k",
                "surround 6ch", "studio 24bit")


def run(args: list[str]):
    return cli.invoke(app, [str(a) for a in args])


def assert_clean_error(res, *needles: str) -> None:
    """Non-zero exit through typer.Exit (no exception escaped) and a short message."""
    out = " ".join(res.output.split())
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert "error" in out.lower(), out
    for n in needles:
        assert n.lower() in out.lower(), out


def seg_args(work: Path, models_dir: Path) -> list:
    return ["segment", work, "--method", "sad", "--models-dir", models_dir, "--device", "cpu"]


# -- mounts ---------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A size-limited tmpfs at ``path`` for the block (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full/read-only disk needs root to mount a tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


def fill(path: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``path`` until ``leave_bytes`` are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


# -- the hostile archive --------------------------------------------------------------------


def build_hostile_archive(root: Path) -> Path:
    arch = root / "archief met spaties ë"
    arch.mkdir(parents=True)
    call = pyannote_sample_dir() / "sample.wav"
    a = load_audio(call, 0.0, 12.0)
    b = load_audio(call, 14.0, 26.0)
    write_audio(arch / f"{SPEECH_FILES[0]}.wav", a)
    write_audio(arch / f"{SPEECH_FILES[1]}.wav", b)
    sf.write(arch / "telefoon 8k.wav", load_audio(call, 0.0, 12.0, 8000), 8000)  # 8 kHz mono
    # 6 channels at 48 kHz: speech in the centre channel, quiet noise elsewhere (a 5.1 mix)
    x48 = load_audio(call, 14.0, 26.0, 48000)
    six = np.random.default_rng(0).standard_normal((x48.size, 6)).astype(np.float32) * 0.002
    six[:, 2] += x48
    sf.write(arch / "surround 6ch.flac", six, 48000, subtype="PCM_16")
    sf.write(arch / "studio 24bit.wav", load_audio(call, 0.0, 12.0, 44100), 44100, subtype="PCM_24")
    write_audio(arch / "stilte.wav", np.zeros(10 * SR, np.float32))  # silence only
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", "30", "-t", "12", "-i",
                    str(music_files()[0]), "-c:a", "libmp3lame", "-b:a", "64k",
                    str(arch / "muziek.mp3")], check=True)  # music only
    # 3 h 01 min: silent 8 kHz FLAC is ~2 MB and encodes in about a second
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", str(3 * 3600 + 60), "-c:a", "flac",
                    str(arch / "drie uur.flac")], check=True)
    add_bad_files(arch)  # empty.wav, notes_renamed.wav, truncated.mp3, video_only.mp4
    return arch


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, models_dir):
    """The archive ingested, segmented with sad and sharded (all in folders with spaces)."""
    root = tmp_path_factory.mktemp("hostile")
    arch = build_hostile_archive(root)
    work = root / "werk map ü"
    res = run(["ingest", arch, "-o", work])
    assert res.exit_code == 0, res.output
    res = run(seg_args(work, models_dir))
    assert res.exit_code == 0, res.output
    shards = root / "scherven ø"
    res = run(["shard", work, "--method", "sad", "-o", shards, "--samples-per-shard", "4",
               "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"arch": arch, "work": work, "shards": shards, "root": root}


def recordings_by_file(work: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_recordings(WorkDir(work).recordings).to_dicts()}


def test_ingest_gives_every_file_a_row(hostile):
    recs = recordings_by_file(hostile["work"])
    for name in ("empty.wav", "notes_renamed.wav", "truncated.mp3", "video_only.mp4"):
        assert recs[name]["status"] == "failed" and recs[name]["reason"], recs[name]
    assert "empty" in recs["empty.wav"]["reason"]
    assert "no audio stream" in recs["video_only.mp4"]["reason"]
    long = recs["drie uur.flac"]
    assert long["status"] == "filtered" and "longer than 3 h" in long["reason"]
    assert long["duration"] == pytest.approx(3 * 3600 + 60, abs=1)
    assert (recs["telefoon 8k.wav"]["sample_rate"], recs["telefoon 8k.wav"]["channels"]) == (8000, 1)
    assert (recs["surround 6ch.flac"]["sample_rate"], recs["surround 6ch.flac"]["channels"]) == (48000, 6)
    assert recs["studio 24bit.wav"]["sample_rate"] == 44100
    for stem in SPEECH_FILES + ("stilte", "muziek"):
        name = next(n for n in recs if n.startswith(stem))
        assert recs[name]["status"] == "ok", recs[name]
    # ids with spaces and non-ASCII characters survive as they are
    assert recs[f"{SPEECH_FILES[0]}.wav"]["recording_id"] == SPEECH_FILES[0]


def test_odd_formats_are_segmented_like_speech(hostile):
    """8 kHz, 6-channel and 24-bit speech all yield speech segments inside the recording."""
    df = read_segments(WorkDir(hostile["work"]).segments("sad"))
    kept = df.group_by("recording_id").agg(pl.col("duration").sum()).to_dicts()
    kept = {r["recording_id"]: r["duration"] for r in kept}
    for stem in SPEECH_FILES:
        assert kept.get(stem, 0.0) > 3.0, (stem, kept)
    # silence gives nothing; music only a little (VAD's false alarms), and nothing crashed
    assert kept.get("stilte", 0.0) == 0.0
    assert kept.get("muziek", 0.0) < 6.0
    assert not df.filter(pl.col("recording_id").is_in(["drie uur", "empty", "truncated"])).height


def test_ids_that_differ_only_in_odd_characters_stay_apart(hostile):
    """'… 20:00' and '… 20_00' must not share a stage-cache file or segment ids."""
    df = read_segments(WorkDir(hostile["work"]).segments("sad"))
    a = df.filter(pl.col("recording_id") == SPEECH_FILES[0])
    b = df.filter(pl.col("recording_id") == SPEECH_FILES[1])
    assert a.height and b.height
    assert not set(a["segment_id"]) & set(b["segment_id"])
    assert a.select("start", "end").rows() != b.select("start", "end").rows()  # different audio
    assert all("." not in s and " " not in s for s in df["segment_id"])


def test_shards_of_odd_inputs_verify(hostile):
    res = run(["verify", hostile["work"], "--shards", hostile["shards"], "--method", "sad"])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output
    idx = pl.read_parquet(hostile["shards"] / "shards.parquet")
    segs = read_segments(WorkDir(hostile["work"]).segments("sad"))
    assert int(idx["count"].sum()) == segs.height
    assert float(idx["hours"].sum()) == pytest.approx(float(segs["duration"].sum()) / 3600, rel=1e-12)


def test_recording_broken_after_ingest_is_a_row_not_a_crash(hostile, models_dir, tmp_path):
    """A file that turns bad after ingest (replaced, emptied) is reported and skipped; a
    header-only file (probes fine, decodes to nothing) as well."""
    arch = tmp_path / "arch"
    arch.mkdir()
    src = hostile["arch"] / "telefoon 8k.wav"
    shutil.copy(src, arch / "goed.wav")
    shutil.copy(src, arch / "later kapot.wav")
    sf.write(arch / "alleen kop.wav", np.zeros(0, np.float32), SR)  # a 44-byte header
    work = tmp_path / "work"
    res = run(["ingest", arch, "-o", work, "--no-verify-decode"])
    assert res.exit_code == 0, res.output
    (arch / "later kapot.wav").write_text("overwritten by something else\n")
    res = run(seg_args(work, models_dir))
    assert res.exit_code == 0, res.output
    assert "failed" in res.output
    df = read_segments(WorkDir(work).segments("sad"))
    assert set(df["recording_id"]) == {"goed"}
    drops = json.loads((WorkDir(work).segments_dir / "sad.drops.json").read_text())
    assert drops["failed_seconds"] > 0
    # Once the file is repaired, --retry-failed decodes it again (a plain rerun keeps the failure).
    shutil.copy(src, arch / "later kapot.wav")
    run(seg_args(work, models_dir))
    assert set(read_segments(WorkDir(work).segments("sad"))["recording_id"]) == {"goed"}
    res = run(seg_args(work, models_dir) + ["--retry-failed"])
    assert res.exit_code == 0, res.output
    assert len(set(read_segments(WorkDir(work).segments("sad"))["recording_id"])) == 2


def test_empty_manifest_is_a_clear_error(hostile, tmp_path):
    seg = read_segments(WorkDir(hostile["work"]).segments("sad")).filter(pl.col("recording_id") == "stilte")
    assert seg.height == 0
    seg.write_parquet(tmp_path / "stilte.parquet")
    res = run(["shard", tmp_path / "stilte.parquet", "-o", tmp_path / "out"])
    assert_clean_error(res, "no segments")


# -- read-only and full disks ------------------------------------------------------------------


def test_read_only_output_dirs(hostile, models_dir, tmp_path):
    """ingest, segment, shard and stem into a read-only file system: one line, exit != 0."""
    with tmpfs(tmp_path / "ro", "4m") as ro:
        shutil.copy(WorkDir(hostile["work"]).recordings, ro / "recordings.parquet")
        remount(ro, "ro")
        res = run(["ingest", hostile["arch"] / "stilte.wav", "-o", ro / "werk"])
        assert_clean_error(res, "read-only")
        res = run(seg_args(ro, models_dir))
        assert_clean_error(res, "read-only")
        res = run(["shard", hostile["work"], "--method", "sad", "-o", ro / "shards"])
        assert_clean_error(res, "read-only")
        res = run(["stem", hostile["work"] / "segments" / "sad.parquet", "-o", ro / "stems",
                   "--device", "cpu"])
        assert_clean_error(res, "read-only")


def test_full_disk_while_sharding_keeps_finished_shards_and_resumes(hostile, tmp_path):
    ref = hostile["shards"]
    total = sum(p.stat().st_size for p in ref.glob("*.tar"))
    with tmpfs(tmp_path / "full", f"{max(64, total // 2 // 1024)}k") as disk:
        out = disk / "scherven"
        res = run(["shard", hostile["work"], "--method", "sad", "-o", out,
                   "--samples-per-shard", "4", "--no-progress"])
        assert_clean_error(res, "no space left")
        kept = [p for p in out.glob("*.tar") if sh.marker_path(out, p.name).exists()]
        assert kept, "shards finished before the disk filled up must be kept"
        assert not list(out.glob(".*.tmp")), "no half-written temp file may stay behind"
        for p in kept:  # what was finished is exactly what an uninterrupted run writes
            assert p.read_bytes() == (ref / p.name).read_bytes()
        remount(disk, "size=64m")
        res = run(["shard", hostile["work"], "--method", "sad", "-o", out,
                   "--samples-per-shard", "4", "--no-progress"])
        assert res.exit_code == 0, res.output
        for p in list(ref.glob("*.tar")) + [ref / "shards.parquet", ref / "_shard_distribution.csv"]:
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_full_disk_while_segmenting_and_ingesting_resumes(hostile, models_dir, tmp_path):
    """The stage cache of finished recordings survives ENOSPC; the rerun resumes and gives
    the same stage outputs and segments as a run that never hit a full disk."""
    src_recs = read_recordings(WorkDir(hostile["work"]).recordings)
    keep = list(SPEECH_FILES[2:])  # three short speech recordings
    with tmpfs(tmp_path / "full", "2m") as disk:
        work = WorkDir(disk / "werk")
        work.root.mkdir()
        src_recs.filter(pl.col("recording_id").is_in(keep)).write_parquet(work.recordings)
        filler = fill(disk, leave_bytes=3 * 4096)  # room for settings.json and about two entries
        res = run(seg_args(work.root, models_dir))
        assert_clean_error(res, "no space left")
        assert not [p for p in (disk / "werk").rglob(".*.tmp")]
        done_before = {p.name: p.read_text() for p in (work.root / "cache").rglob("*.json")}
        assert done_before, "recordings finished before the disk filled up must be kept"

        res = run(["ingest", hostile["arch"] / "stilte.wav", "-o", disk / "ingest"])  # journal
        assert_clean_error(res, "no space left")

        filler.unlink()
        res = run(seg_args(work.root, models_dir))
        assert res.exit_code == 0, res.output
        cache_dirs = sorted((work.root / "cache").glob("vad-*"))
        assert len(cache_dirs) == 1
        ref_dir = WorkDir(hostile["work"]).root / "cache" / cache_dirs[0].name
        for name, text in done_before.items():  # kept entries were not redone differently
            assert (cache_dirs[0] / name).read_text() == text
        for p in cache_dirs[0].glob("*.json"):  # same model outputs as the never-full run
            assert p.read_text() == (ref_dir / p.name).read_text(), p.name
        got = read_segments(work.segments("sad")).drop("path")
        want = (read_segments(WorkDir(hostile["work"]).segments("sad"))
                .filter(pl.col("recording_id").is_in(keep)).drop("path"))
        assert got.equals(want)
        res = run(["ingest", hostile["arch"] / "stilte.wav", "-o", disk / "ingest"])
        assert res.exit_code == 0, res.output
