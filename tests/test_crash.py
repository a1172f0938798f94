"""Crash safety (issue 8, item 3): `kill -9` ingest, segment, shard and stem at seeded random
moments, rerun, and get exactly the output of an uninterrupted run.

The moments are drawn with a seeded RNG relative to the run's own progress ("a random
fraction of a second after the k-th result appeared", k random too), plus one kill during
start-up, so every kill lands somewhere inside the work whatever the machine's speed; the
whole process group is killed, like an OOM killer or a pulled plug would.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import corpora
from corpus_tools.audio import load_audio, write_audio
from corpus_tools.cli import app
from corpus_tools.manifests import WorkDir
from corpus_tools.samples import add_bad_files, alsa_clips, music_files, pyannote_sample_dir

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

cli = CliRunner()
SR = 16_000
SEED = 8


def ok(args: list):
    res = cli.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def tree(d: Path) -> dict[str, str]:
    """Relative path → sha256 of every file not hidden (temp files of killed runs are)."""
    return corpora.file_tree(d)


def kill_during(args: list, progress: Callable[[], int], after: int | None, delay: float,
                timeout: float = 180.0) -> bool:
    """Run ``corpus ARGS`` and SIGKILL its process group ``delay`` s after ``progress()``
    has grown by ``after`` (``None``: ``delay`` s after start). Returns whether it was
    still running when killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "corpus_tools.cli", *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    start = progress()
    t0 = time.monotonic()
    try:
        if after is not None:
            while p.poll() is None and progress() < start + after:
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"no progress within {timeout} s: {args}")
                time.sleep(0.01)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        killed = p.poll() is None
        if killed:
            os.killpg(p.pid, signal.SIGKILL)
        # shown with -s: where the kill landed
        print(f"{args[0]}: {'killed' if killed else 'finished'} after {time.monotonic() - t0:.2f} s, "
              f"progress {start} → {progress()}")
        return killed
    finally:
        p.wait()


def count(d: Path, pattern: str) -> Callable[[], int]:
    return lambda: sum(1 for p in d.glob(pattern) if not p.name.startswith((".", "settings")))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Five short recordings (speech in several formats, music + speech) and bad files."""
    out = tmp_path_factory.mktemp("crash") / "arch"
    out.mkdir()
    call = pyannote_sample_dir() / "sample.wav"
    for i in range(4):
        write_audio(out / f"rec{i}.{'wav' if i % 2 == 0 else 'flac'}",
                    load_audio(call, 6.0 * i, 6.0 * i + 12.0))
    gap = np.zeros(SR // 2, np.float32)
    write_audio(out / "rec4.wav", np.concatenate([load_audio(music_files()[1], 30.0, 36.0) * 0.5, gap,
                                                  load_audio(alsa_clips()[0]), gap]))
    add_bad_files(out)
    return out


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory, models_dir):
    """Uninterrupted ingest → segment (sad) → shard, in one process."""
    root = tmp_path_factory.mktemp("crash-ref")
    work = root / "work"
    ok(["ingest", archive, "-o", work])
    ok(["segment", work, "--method", "sad", "--models-dir", models_dir, "--device", "cpu"])
    ok(["shard", work, "--method", "sad", "-o", root / "shards", "--samples-per-shard", "2",
        "--no-progress"])
    return {"work": work, "shards": root / "shards"}


def seg_outputs(work: Path) -> dict[str, str]:
    return {k: v for k, v in tree(work).items() if k.startswith(("segments/", "cache/vad-", "cache/error"))}


# -- the tests ------------------------------------------------------------------------------------


def test_killed_ingest_resumes_to_the_same_recordings(archive, reference, tmp_path):
    rng = random.Random(SEED)
    work = tmp_path / "work"
    journal = work / "cache" / "ingest" / "probes.jsonl"

    def lines() -> int:
        try:
            return journal.read_bytes().count(b"\n")
        except OSError:
            return 0

    args = ["ingest", archive, "-o", work, "--workers", "1"]
    kill_during(args, lines, None, rng.uniform(0.2, 1.5))
    for _ in range(2):
        kill_during(args, lines, rng.randint(1, 3), rng.uniform(0.0, 0.15))
    ok(args)
    assert WorkDir(work).recordings.read_bytes() == WorkDir(reference["work"]).recordings.read_bytes()


def test_killed_segmentation_resumes_to_identical_outputs(archive, reference, models_dir, tmp_path):
    rng = random.Random(SEED + 1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "recordings.parquet").write_bytes(WorkDir(reference["work"]).recordings.read_bytes())
    args = ["segment", work, "--method", "sad", "--models-dir", models_dir, "--device", "cpu"]
    entries = count(work / "cache", "vad-*/*.json")
    kill_during(args, entries, None, rng.uniform(0.5, 4.0))  # while importing / loading models
    for _ in range(2):  # while a recording is being processed
        kill_during(args, entries, 1, rng.uniform(0.0, 1.0))
    ok(args)
    assert seg_outputs(work) == seg_outputs(reference["work"])
    ok(["verify", work])


def sliding_manifest(archive: Path, root: Path) -> Path:
    """Overlapping 1.5 s windows every 0.5 s over three mp3 recordings (~60 segments, each
    cut through ffmpeg), so a shard run lasts long enough to be killed mid-write."""
    rows = []
    for i in range(3):
        src = next(archive.glob(f"rec{i}.*"))
        mp3 = root / f"rec{i}.mp3"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-c:a", "libmp3lame",
                        "-b:a", "64k", str(mp3)], check=True)
        for k in range(21):
            start = 0.5 * k
            rows.append({"segment_id": f"rec{i}_{k:03d}", "recording_id": f"rec{i}", "path": str(mp3),
                         "start": start, "end": start + 1.5, "duration": 1.5, "text": f"window {k}",
                         "speaker": None, "method": "test", "language": "nl", "session": f"rec{i}"})
    path = root / "windows.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_killed_sharding_resumes_to_identical_bytes(archive, tmp_path):
    rng = random.Random(SEED + 2)
    manifest = sliding_manifest(archive, tmp_path)
    base = ["shard", manifest, "--samples-per-shard", "3", "--no-progress"]
    ok(base + ["-o", tmp_path / "ref"])
    n = pl.read_parquet(tmp_path / "ref" / "shards.parquet").height
    assert n >= 15
    out = tmp_path / "shards"
    args = base + ["-o", out]
    markers = count(out / ".state", "shard.*.json")
    kill_during(args, markers, None, rng.uniform(0.3, 1.5))
    for _ in range(3):
        kill_during(args, markers, rng.randint(1, 4), rng.uniform(0.0, 0.1))
    ok(args)
    assert tree(out) == tree(tmp_path / "ref")
    ok(["verify", out, "--manifest", manifest])


def test_killed_stem_run_resumes_to_identical_files(tiny_demucs, tmp_path):
    rng = random.Random(SEED + 3)
    music = music_files()
    corpora.music_manifest(tmp_path, [(f"fma/{i}", f"fma{i}", music[i % len(music)], 40.0 + i, 42.5 + i)
                                      for i in range(4)])
    base = ["stem", tmp_path / "fma.parquet", "--demucs-model", tiny_demucs, "--device", "cpu",
            "--batch-size", "1", "--threads", "1"]
    ok(base + ["-o", tmp_path / "ref"])
    out = tmp_path / "stems"
    records = count(out / "records", "*.json")
    kill_during(base + ["-o", out], records, 1, rng.uniform(0.0, 0.5))
    kill_during(base + ["-o", out], records, 1, rng.uniform(0.0, 0.5))
    ok(base + ["-o", out])
    assert tree(out) == tree(tmp_path / "ref")
