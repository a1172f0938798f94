"""Scale-out (issue 8): local worker processes, a local Ray instance, and split runs
(--num-shards/--shard-index + `corpus merge`) write the same bytes as one local process;
`corpus verify` finds every kind of mismatch.

One module-scoped Ray instance (2 CPUs) serves every Ray test; it starts in ~10 s.
"""

from __future__ import annotations

import functools
import operator
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

import corpora
from corpus_tools.audio import load_audio, write_audio
from corpus_tools.cli import app
from corpus_tools.manifests import WorkDir, read_segments
from corpus_tools.parallel import ray_utils
from corpus_tools.parallel import segment as parallel_segment
from corpus_tools.samples import alsa_clips, espeak, music_files, pyannote_sample_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

cli = CliRunner()
SR = 16_000


def run(args: list) -> object:
    res = cli.invoke(app, [str(a) for a in args])
    return res


def ok(args: list):
    res = run(args)
    assert res.exit_code == 0, res.output
    return res


def tree(d: Path, pattern: str = "*") -> dict[str, str]:
    """Relative path → sha256 of every non-hidden file under ``d``."""
    return corpora.file_tree(d, pattern)


def seg_outputs(work: Path) -> dict[str, str]:
    """Everything segmentation writes: manifests, drop reports and the stage caches."""
    return {**tree(work / "segments"), **{f"cache/{k}": v for k, v in tree(work / "cache").items()
                                          if not k.startswith(("ingest", "parts"))}}


# -- fixtures -----------------------------------------------------------------------------------


def build_mini_archive(out: Path) -> Path:
    """Four short recordings (~45 s) in wav, mp3 and flac: real speech, TTS, music, silence."""
    out.mkdir(parents=True)
    call = pyannote_sample_dir() / "sample.wav"
    write_audio(out / "a.wav", load_audio(call, 0.0, 15.0))
    write_audio(out / "_b.wav", load_audio(call, 15.0, 30.0))
    import subprocess

    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(out / "_b.wav"), "-c:a",
                    "libmp3lame", "-b:a", "64k", str(out / "b.mp3")], check=True)
    (out / "_b.wav").unlink()
    gap = np.zeros(SR // 2, np.float32)
    write_audio(out / "c.flac", np.concatenate(sum(([load_audio(c), gap] for c in alsa_clips()[:3]), [])))
    music = load_audio(music_files()[0], 20.0, 26.0) * 0.6
    write_audio(out / "d.wav", np.concatenate([music, gap, espeak("Goedemorgen, dit is het nieuws."), gap]))
    return out


@pytest.fixture(scope="module")
def mini(tmp_path_factory, models_dir):
    """The mini archive ingested, segmented with sad by one local process, and sharded."""
    root = tmp_path_factory.mktemp("scale")
    arch = build_mini_archive(root / "arch")
    work = root / "ref"
    ok(["ingest", arch, "-o", work])
    ok(["segment", work, "--method", "sad", "--models-dir", models_dir, "--device", "cpu"])
    shards = root / "ref-shards"
    ok(["shard", work, "--method", "sad", "-o", shards, "--samples-per-shard", "3", "--no-progress"])
    assert read_segments(WorkDir(work).segments("sad")).height >= 6
    return {"root": root, "arch": arch, "work": work, "shards": shards, "models": models_dir}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    yield ray
    ray.shutdown()


def fresh(mini, tmp_path: Path) -> Path:
    """A work directory with only the ingest result (nothing segmented yet)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(WorkDir(mini["work"]).recordings, WorkDir(work).recordings)
    return work


def segment_args(work: Path, mini, *extra) -> list:
    return ["segment", work, "--method", "sad", "--models-dir", mini["models"], "--device", "cpu", *extra]


# -- segmentation -------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_worker_processes_write_identical_outputs(mini, tmp_path):
    work = fresh(mini, tmp_path)
    ok(segment_args(work, mini, "--workers", "2"))
    assert seg_outputs(work) == seg_outputs(mini["work"])


@pytest.mark.slow
def test_ray_segment_writes_identical_outputs(mini, ray_local, tmp_path):
    work = fresh(mini, tmp_path)
    ok(segment_args(work, mini, "--backend", "ray", "--workers", "2"))
    assert seg_outputs(work) == seg_outputs(mini["work"])


@pytest.mark.slow
def test_segment_parts_merge_to_identical_outputs(mini, tmp_path):
    work = fresh(mini, tmp_path)
    res = ok(segment_args(work, mini, "--num-shards", "2", "--shard-index", "1"))
    assert "corpus merge" in res.output
    assert not (work / "segments" / "sad.parquet").exists()  # parts only fill the caches
    res = run(["merge", work])  # part 0 missing: a clear error, nothing written
    assert res.exit_code != 0 and "parts 0 of 2" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    ok(segment_args(work, mini, "--num-shards", "2", "--shard-index", "0"))
    ok(["merge", work])
    assert seg_outputs(work) == seg_outputs(mini["work"])
    ok(["verify", work])


@pytest.mark.slow
def test_merge_uses_the_parts_models_and_refuses_parts_that_resolved_different_ones(mini, tmp_path):
    """Merge reads the cache folders the parts keyed on the models they resolved (the model
    may be gone by then); parts whose models differ behind the same option are refused."""
    import torch

    work = fresh(mini, tmp_path)
    vad = tmp_path / "vad.bin"
    shutil.copy(Path(mini["models"]) / "vad" / "whisperx-pyannote" / "pytorch_model.bin", vad)
    for i in (0, 1):
        ok(segment_args(work, mini, "--vad-model", vad, "--num-shards", "2", "--shard-index", i))
    away = vad.rename(tmp_path / "vad-away.bin")  # merge must not need the models
    ok(["merge", work])
    assert read_segments(WorkDir(work).segments("sad")).equals(read_segments(WorkDir(mini["work"]).segments("sad")))

    ckpt = torch.load(away, map_location="cpu", weights_only=False)  # new weights, same path
    name = sorted(k for k, v in ckpt["state_dict"].items() if v.dim() == 2)[0]
    ckpt["state_dict"][name] = ckpt["state_dict"][name] * 1.01
    torch.save(ckpt, vad)
    ok(segment_args(work, mini, "--vad-model", vad, "--num-shards", "2", "--shard-index", "1"))
    res = run(["merge", work])
    message = " ".join(res.output.split())
    assert res.exit_code != 0, "parts made with different VAD weights were merged"
    assert "different models" in message and "vad" in message and "Traceback" not in res.output


@pytest.mark.slow
def test_a_worker_that_resolves_other_models_than_the_driver_refuses(mini, tmp_path):
    """Workers cache under the driver's keys, so a worker that would load other weights
    (another machine, a file changed since) must stop before it caches anything."""
    from dataclasses import asdict

    import torch

    from corpus_tools.segment.backends import SegmentConfig, resolve_stage_keys
    from corpus_tools.segment.runner import ok_recordings

    work = fresh(mini, tmp_path)
    vad = tmp_path / "vad.bin"
    shutil.copy(Path(mini["models"]) / "vad" / "whisperx-pyannote" / "pytorch_model.bin", vad)
    cfg = SegmentConfig(models_dir=str(mini["models"]), device="cpu", vad_model=str(vad))
    driver_keys = resolve_stage_keys(cfg, ["vad"])
    ckpt = torch.load(vad, map_location="cpu", weights_only=False)
    name = sorted(k for k, v in ckpt["state_dict"].items() if v.dim() == 2)[0]
    ckpt["state_dict"][name] = ckpt["state_dict"][name] * 1.01
    torch.save(ckpt, vad)
    threads = torch.get_num_threads()
    try:
        parallel_segment._worker_init(str(work), asdict(cfg), threads, driver_keys)
        with pytest.raises(ValueError, match="different models"):
            parallel_segment._worker_run((ok_recordings(WorkDir(work))[0], ["vad"]))
    finally:
        parallel_segment._WORKER_STATE.clear()
    assert not list((work / "cache").glob("vad-*/*.json"))


# -- shards, ingest, stems ------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_shards_and_shard_parts_are_byte_identical(mini, ray_local, tmp_path):
    ref = tree(mini["shards"])
    base = ["shard", mini["work"], "--method", "sad", "--samples-per-shard", "3", "--no-progress"]
    ok(base + ["-o", tmp_path / "ray", "--backend", "ray"])
    assert tree(tmp_path / "ray") == ref
    # SLURM-style parts into one shared directory: the last part writes the index
    for i in (2, 0, 1):
        ok(base + ["-o", tmp_path / "shared", "--num-shards", "3", "--shard-index", str(i)])
    assert tree(tmp_path / "shared") == ref
    # parts on machines without a shared disk: gathered and indexed by `corpus merge`
    for i in (0, 1):
        ok(base + ["-o", tmp_path / f"part{i}", "--num-shards", "2", "--shard-index", str(i)])
        assert not (tmp_path / f"part{i}" / "shards.parquet").exists()
    res = run(["merge", tmp_path / "part0", "-o", tmp_path / "merged"])
    assert res.exit_code != 0 and "not finished" in res.output  # part 1's shards are missing
    ok(["merge", tmp_path / "part0", tmp_path / "part1", "-o", tmp_path / "merged"])
    assert tree(tmp_path / "merged") == ref
    ok(["verify", tmp_path / "merged", "--manifest", mini["work"], "--method", "sad"])


@pytest.mark.slow
def test_ray_ingest_matches_local(mini, ray_local, tmp_path):
    ok(["ingest", mini["arch"], "-o", tmp_path / "w", "--backend", "ray"])
    assert (tmp_path / "w" / "recordings.parquet").read_bytes() == \
        WorkDir(mini["work"]).recordings.read_bytes()


def music_manifest(root: Path) -> Path:
    music = music_files()
    return corpora.music_manifest(root, [(f"fma/{i}", f"fma{i}", music[i % len(music)], 30.0 + i, 32.0 + i + 0.5 * i)
                                         for i in range(3)])


@pytest.mark.slow
def test_ray_stems_match_local(ray_local, tiny_demucs, tmp_path):
    manifest = music_manifest(tmp_path)
    args = ["stem", manifest, "--demucs-model", tiny_demucs, "--device", "cpu", "--batch-size", "2",
            "--threads", "1"]
    ok(args + ["-o", tmp_path / "local"])
    res = ok(args + ["-o", tmp_path / "ray", "--backend", "ray", "--workers", "2"])
    assert "3 separated" in " ".join(res.output.split())
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    assert pl.read_parquet(tmp_path / "ray" / "stems.parquet").height == 3


# -- verify ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_finds_every_kind_of_mismatch(mini, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(mini["shards"], good)
    ok(["verify", good, "--manifest", mini["work"], "--method", "sad"])
    names = sorted(p.name for p in good.glob("*.tar"))

    def broken(name: str, damage) -> str:
        d = tmp_path / name
        shutil.copytree(good, d)
        damage(d)
        res = run(["verify", d, "--manifest", mini["work"], "--method", "sad"])
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output
        return " ".join(res.output.split())

    def flip(d: Path):  # one bit of audio inside the first shard
        p = d / names[0]
        data = bytearray(p.read_bytes())
        data[3000] ^= 1
        p.write_bytes(bytes(data))

    assert "sha256" in broken("flipped", flip)
    out = broken("truncated", lambda d: (d / names[1]).write_bytes((d / names[1]).read_bytes()[:1500]))
    assert "not a readable tar" in out or "utterances, index says" in out
    assert "missing" in broken("deleted", lambda d: (d / names[-1]).unlink())
    assert "incomplete" in broken("no-index", lambda d: (d / "shards.parquet").unlink())

    # the manifest no longer matches the shards (one segment dropped after sharding)
    work = tmp_path / "work"
    shutil.copytree(mini["work"], work)
    seg = read_segments(WorkDir(work).segments("sad"))
    seg.slice(1).write_parquet(tmp_path / "fewer.parquet")
    res = run(["verify", good, "--manifest", tmp_path / "fewer.parquet"])
    assert res.exit_code == 1 and "not in the manifest" in " ".join(res.output.split())

    # a segment ending after its recording, and duplicated ids, in a work directory
    bad = seg.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("end") + 100.0)
                           .otherwise(pl.col("end")).alias("end"))
    bad = bad.with_columns((pl.col("end") - pl.col("start")).alias("duration"))
    pl.concat([bad, bad.head(1)]).write_parquet(WorkDir(work).segments("sad"))
    res = run(["verify", work])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "after its recording" in out and "duplicated" in out


# -- building blocks ------------------------------------------------------------------------------


def test_bounded_imap_keeps_the_queue_bounded():
    from concurrent.futures import ThreadPoolExecutor

    in_flight, peak, lock = 0, 0, threading.Lock()

    def work(x):
        nonlocal in_flight, peak
        time.sleep(0.002 * (x % 3))
        with lock:
            in_flight -= 1
        return x * x

    def submit(x):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        return ex.submit(work, x)

    with ThreadPoolExecutor(2) as ex:
        got = sorted(ray_utils.bounded_imap(submit, list(range(40)), limit=4))
    assert got == [x * x for x in range(40)]
    assert peak <= 4


@pytest.mark.slow
def test_ray_map_keeps_order_and_raises_the_tasks_own_error(ray_local):
    assert list(ray_utils.ray_map(pow, range(7), kwargs={"exp": 2}, window=3)) == [x * x for x in range(7)]
    with pytest.raises(ZeroDivisionError):  # not Ray's wrapper with a remote traceback
        list(ray_utils.ray_map(functools.partial(operator.truediv, 1.0), [1.0, 0.0]))


def test_workers_default_to_the_gpu_count(monkeypatch):
    monkeypatch.setattr(ray_utils, "gpu_count", lambda: 4)
    assert ray_utils.default_workers(0, "auto") == 4 and ray_utils.default_workers(3, "auto") == 3
    assert ray_utils.default_workers(0, "cpu") == 1
    monkeypatch.setattr(ray_utils, "gpu_count", lambda: 0)
    assert ray_utils.default_workers(0, "auto") == 1
