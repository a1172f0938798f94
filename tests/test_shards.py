"""`corpus shard` / corpus_tools.shards: deterministic, atomic, resumable tar shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from corpora import start_slow_shard_writer
from corpus_tools import shards as sh
from corpus_tools.audio import encode_audio
from corpus_tools.text import normalize_text

REQUIRED_JSON_KEYS = {
    "id", "sample_id", "num_frames", "sample_rate", "duration", "transcript", "transcription",
    "speaker", "speaker_id", "recording", "recording_id", "session", "language",
    "language_tag", "method",
}


def make_manifest(root: Path, n_recordings: int = 3, seconds: float = 40.0, seed: int = 0) -> pl.DataFrame:
    """Recordings at 16/22.05/44.1 kHz (wav and flac, one stereo) cut into 1–6 s segments."""
    rng = np.random.default_rng(seed)
    rows = []
    fmts = [(16000, "wav", 1), (44100, "flac", 2), (22050, "wav", 1)]
    for r in range(n_recordings):
        sr, ext, ch = fmts[r % len(fmts)]
        t = np.arange(int(sr * seconds)) / sr
        x = 0.3 * np.sin(2 * np.pi * (200 + 50 * r) * t) + 0.05 * rng.standard_normal(t.size)
        x = np.stack([x] * ch, axis=1) if ch > 1 else x
        path = root / f"rec{r}.{ext}"
        sf.write(path, x.astype(np.float32), sr)
        start, i = 0.0, 0
        while True:
            d = float(rng.uniform(1.0, 6.0))
            if start + d > seconds:
                break
            rows.append({"segment_id": f"rec{r}.seg{i:03d}", "recording_id": f"rec{r}",
                         "path": str(path), "start": start, "end": start + d, "duration": d,
                         "text": f"utterance {r} {i}", "speaker": f"spk{i % 2}",
                         "method": "unit", "language": "nl", "session": f"rec{r}",
                         "gender": "f" if i % 2 else None})
            start += d + float(rng.uniform(0.0, 0.5))
            i += 1
    return pl.DataFrame(rows)


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.tar"))}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pl.DataFrame:
    return make_manifest(tmp_path_factory.mktemp("rec"))


@pytest.fixture(scope="module")
def written(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    sh.write_shards(manifest, out, samples_per_shard=8, progress=False)
    return out


def test_layout_index_and_partial(written, manifest):
    names = sorted(p.name for p in written.glob("*.tar"))
    n = manifest.height
    assert len(names) == -(-n // 8)
    assert names[0] == "shard.000000.tar"
    if n % 8:
        assert names[-1] == f"shard.{len(names) - 1:06d}.partial.tar"
    index = pl.read_parquet(written / "shards.parquet")
    assert set(index.columns) >= {"name", "count", "hours", "min_duration", "max_duration",
                                  "sha256", "bytes"}
    assert index["name"].to_list() == names
    assert index["count"].sum() == n
    # hours equal the manifest's
    assert index["hours"].sum() == pytest.approx(manifest["duration"].sum() / 3600, rel=1e-9)
    for row in index.iter_rows(named=True):
        data = (written / row["name"]).read_bytes()
        assert row["bytes"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    dist = pl.read_csv(written / "_shard_distribution.csv")
    assert {"key", "shard_idx", "partial_shard"} <= set(dist.columns)
    assert dist.height == n
    assert sh.verify_shards(written) == []


def test_every_tar_passes_tar_t_and_members_are_normalised(written):
    for p in written.glob("*.tar"):
        res = subprocess.run(["tar", "-tf", str(p)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        members = res.stdout.split()
        assert len(members) % 2 == 0
        with tarfile.open(p) as tf:
            infos = tf.getmembers()
        assert [i.name for i in infos] == sorted([i.name for i in infos],
                                                 key=lambda s: (s.split(".")[0], s))
        for i in infos:
            assert (i.mtime, i.uid, i.gid, i.mode) == (sh.TAR_MTIME, 0, 0, 0o444)
            assert (i.uname, i.gname) == ("research", "data")


def test_json_keys_and_audio_content(written, manifest):
    by_id = {r["segment_id"]: r for r in manifest.iter_rows(named=True)}
    seen = 0
    for p in sorted(written.glob("*.tar")):
        with tarfile.open(p) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            meta = json.loads(data)
            assert REQUIRED_JSON_KEYS <= set(meta)
            row = by_id[meta["id"]]
            assert meta["sample_id"] == row["segment_id"]
            assert meta["transcript"] == row["text"]  # as given; nanow2v2's key holds the letter form
            assert meta["transcription"] == normalize_text(row["text"], "nl")
            assert meta["speaker"] == meta["speaker_id"] == row["speaker"]
            assert meta["recording"] == meta["recording_id"] == row["recording_id"]
            assert meta["language"] == meta["language_tag"] == "nl"
            assert meta["method"] == "unit" and meta["sample_rate"] == 16000
            assert meta["num_frames"] == round(row["duration"] * 16000)
            audio, sr = sf.read(io.BytesIO(members[name[:-5] + ".wav"]), dtype="float32")
            assert sr == 16000 and audio.ndim == 1 and len(audio) == meta["num_frames"]
            assert 0.1 < np.abs(audio).max() <= 1.0  # real signal, not silence
            seen += 1
    assert seen == manifest.height


def test_byte_identical_across_runs_and_workers(manifest, written, tmp_path):
    again = tmp_path / "again"
    sh.write_shards(manifest.sample(fraction=1.0, shuffle=True, seed=3), again,
                    samples_per_shard=8, progress=False)  # input row order must not matter
    assert digest(again) == digest(written)
    par = tmp_path / "par"
    sh.write_shards(manifest, par, samples_per_shard=8, progress=False, workers=2)
    assert digest(par) == digest(written)
    assert (again / "shards.parquet").read_bytes() == (written / "shards.parquet").read_bytes()


def test_flac_random_strategy_and_seed(manifest, tmp_path):
    a = sh.write_shards(manifest, tmp_path / "a", samples_per_shard=10, strategy="random",
                        fmt="flac", seed=1, progress=False)
    b = sh.write_shards(manifest, tmp_path / "b", samples_per_shard=10, strategy="random",
                        fmt="flac", seed=1, progress=False)
    c = sh.write_shards(manifest, tmp_path / "c", samples_per_shard=10, strategy="random",
                        fmt="flac", seed=2, progress=False)
    assert a["sha256"].to_list() == b["sha256"].to_list() != c["sha256"].to_list()
    with tarfile.open(next((tmp_path / "a").glob("*.tar"))) as tf:
        exts = {m.name.split(".", 1)[1] for m in tf.getmembers()}
    assert exts == {"json", "flac"}


def test_length_sorted_shards_are_length_bins(written):
    index = pl.read_parquet(written / "shards.parquet").sort("shard_idx")
    mins, maxs = index["min_duration"].to_list(), index["max_duration"].to_list()
    assert all(maxs[i] <= mins[i + 1] for i in range(len(mins) - 1))


def test_byte_target(manifest, tmp_path):
    limit = 600_000
    index = sh.write_shards(manifest, tmp_path / "s", samples_per_shard=5000,
                            max_shard_bytes=limit, progress=False)
    assert index.height > 1
    assert index["bytes"].max() <= limit
    assert index["count"].sum() == manifest.height


def test_interrupted_write_resumes_to_identical_bytes(manifest, written, tmp_path):
    """SIGKILL a writer mid-shard; the rerun gives the uninterrupted bytes."""
    out = tmp_path / "killed"
    proc = start_slow_shard_writer(manifest, tmp_path / "segs.parquet", out, 8, 0.15)
    tmp1 = sh.temp_path(out / "shard.000001.tar")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if tmp1.exists() and tmp1.stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finals = sorted(out.glob("*.tar"))
    assert [p.name for p in finals] == ["shard.000000.tar"]  # never a truncated final name
    assert subprocess.run(["tar", "-tf", str(finals[0])], capture_output=True).returncode == 0
    assert not (out / "shards.parquet").exists()
    sh.write_shards(manifest, out, samples_per_shard=8, progress=False)
    assert digest(out) == digest(written)
    assert not list(out.glob(".*.tmp"))


def test_resume_trusts_only_markers(manifest, written, tmp_path):
    out = tmp_path / "s"
    sh.write_shards(manifest, out, samples_per_shard=8, progress=False)
    first = out / "shard.000000.tar"
    mtime_kept = (out / "shard.000001.tar").stat().st_mtime_ns
    first.write_bytes(first.read_bytes()[:1000])  # a truncated tar...
    sh.marker_path(out, "shard.000000.tar").unlink()  # ...without its marker
    (out / "shards.parquet").unlink()
    index = sh.write_shards(manifest, out, samples_per_shard=8, progress=False)
    assert digest(out) == digest(written)
    assert (out / "shard.000001.tar").stat().st_mtime_ns == mtime_kept  # not rewritten
    assert index.height == len(digest(written))


def test_refuses_foreign_directory_unless_overwrite(manifest, tmp_path):
    out = tmp_path / "s"
    sh.write_shards(manifest, out, samples_per_shard=8, progress=False)
    with pytest.raises(FileExistsError):
        sh.write_shards(manifest, out, samples_per_shard=9, progress=False)
    index = sh.write_shards(manifest, out, samples_per_shard=9, progress=False, overwrite=True)
    assert sorted(p.name for p in out.glob("*.tar")) == index["name"].to_list()


def test_shard_subsets_compose(manifest, written, tmp_path):
    out = tmp_path / "s"
    part = sh.write_shards(manifest, out, samples_per_shard=8, progress=False, num_shards=2,
                           shard_index=1)
    assert set(part["shard_idx"].to_list()) == {i for i in range(len(digest(written))) if i % 2 == 1}
    assert not (out / "shards.parquet").exists()
    sh.write_shards(manifest, out, samples_per_shard=8, progress=False, num_shards=2, shard_index=0)
    assert digest(out) == digest(written)
    assert (out / "shards.parquet").exists()


def test_keys_are_webdataset_safe_and_ids_checked(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    base = {"recording_id": "a", "path": str(tmp_path / "a.wav"), "start": 0.0, "end": 0.5,
            "duration": 0.5, "text": "", "speaker": None, "method": "m", "language": None,
            "session": None}
    df = pl.DataFrame([{**base, "segment_id": "x.1"}, {**base, "segment_id": "x_1"},
                       {**base, "segment_id": "x/1"}])
    sh.write_shards(df, tmp_path / "s", progress=False)
    with tarfile.open(next((tmp_path / "s").glob("*.tar"))) as tf:
        names = [m.name for m in tf.getmembers()]
    keys = {n.split(".", 1)[0] for n in names}
    assert len(keys) == 3 and all("/" not in k for k in keys)
    with pytest.raises(ValueError, match="duplicate"):
        sh.write_shards(pl.concat([df, df]), tmp_path / "d", progress=False)


def test_write_one_shard_from_items(tmp_path):
    items = [(f"k{i}", encode_audio(np.full(800 * (i + 1), 0.1, np.float32), 16000, "flac"),
              {"id": f"k{i}", "num_frames": 800 * (i + 1), "sample_rate": 16000})
             for i in (2, 0, 1)]
    stats = sh.write_one_shard(tmp_path / "sim.000000.tar", items)
    assert stats["count"] == 3 and stats["num_frames"] == 800 * 6
    with tarfile.open(tmp_path / "sim.000000.tar") as tf:
        assert tf.getnames() == ["k0.json", "k0.flac", "k1.json", "k1.flac", "k2.json", "k2.flac"]
    with pytest.raises(ValueError, match="sorted"):
        sh.write_one_shard(tmp_path / "bad.tar", items, presorted=True)
    assert not (tmp_path / "bad.tar").exists() and not list(tmp_path.glob(".*tmp"))


def test_webdataset_library_reads_shards(written, manifest):
    import webdataset as wds

    urls = [str(p) for p in sorted(written.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                        empty_check=False).decode()
    n = 0
    for sample in ds:
        assert {"__key__", "json", "wav"} <= set(sample)
        n += 1
    assert n == manifest.height


def test_cli_shard_from_workdir(manifest, written, tmp_path):
    from typer.testing import CliRunner

    from corpus_tools.cli import app
    from corpus_tools.manifests import WorkDir, write_segments

    wd = WorkDir(tmp_path / "work")
    write_segments(manifest, wd.segments("unit"))
    runner = CliRunner()
    res = runner.invoke(app, ["shard", str(wd.root), "--method", "unit", "-o",
                              str(tmp_path / "out"), "--samples-per-shard", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert digest(tmp_path / "out") == digest(written)
    res = runner.invoke(app, ["shard", str(wd.root), "--method", "nope", "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    res = runner.invoke(app, ["shard", str(wd.root), "-o", str(tmp_path / "x"), "--format", "mp3"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["shard", str(wd.root), "-o", str(tmp_path / "x"),
                              "--max-shard-size", "lots"])
    assert res.exit_code != 0
