"""`trainer pretrain` end to end on CPU: learning, exact resume, DDP (gloo), the simulation hook, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corpora import alsa_voice_rows, pretrain_worker, run_ddp_worker, sample_pieces, sample_wav
from trainer.pretrain import PretrainArgs, pretrain

pytestmark = pytest.mark.slow  # every test trains
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Train and validation shards of real speech (pyannote's sample.wav + ALSA voice clips)."""
    import polars as pl

    from corpus_tools.shards import write_shards

    root = tmp_path_factory.mktemp("shards")
    sample = sample_wav()
    rows = sample_pieces(sample, 0.0, 40, "tr") + alsa_voice_rows()
    write_shards(pl.DataFrame(rows), root / "train", samples_per_shard=16, progress=False)
    write_shards(pl.DataFrame(sample_pieces(sample, 0.55, 8, "va")), root / "val", samples_per_shard=16,
                 progress=False)
    return {"train": str(root / "train"), "val": str(root / "val")}


def read_log(run_dir: Path, split: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def tiny_args(shards, out, **kw) -> PretrainArgs:
    base = dict(shards=shards["train"], out=str(out), config="tiny", batch_seconds=8.0, quiet=True, num_workers=0)
    base.update(kw)
    return PretrainArgs(**base)


def test_tiny_pretraining_learns_and_logs(shards, tmp_path):
    run = tmp_path / "run"
    result = pretrain(tiny_args(shards, run, steps=300, log_every=25, val_every=150, ckpt_every=150,
                                val_shards=shards["val"], val_batches=4))
    train = read_log(run)
    first, last = train[0], train[-1]
    assert last["step"] == 300 and result["step"] == 300
    assert last["contrastive"] < first["contrastive"] - 0.3, (first["contrastive"], last["contrastive"])
    assert last["accuracy"] > first["accuracy"]
    assert last["ppl_cb0"] > 2 and last["ppl_cb1"] > 2, "codebooks must not collapse"
    for key in ("loss", "contrastive", "diversity", "l2", "accuracy", "ppl_cb0", "prob_ppl_cb1", "cb0_sim_mean",
                "cb1_sim_min", "cb1_sim_max", "temperature", "lr", "grad_norm", "hours_seen",
                "audio_seconds_per_second", "masked_frames", "padding_fraction"):
        assert key in last, key
    assert 0.3 < last["hours_seen"] < 0.8  # 300 steps × ≤ 8 s
    assert last["temperature"] < 2.0
    val = read_log(run, "val")
    assert [v["step"] for v in val] == [150, 300] and all("accuracy" in v for v in val)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "step_000000150.pt", "step_000000300.pt"]

    # trainer plot and trainer export-hf on the run.
    from typer.testing import CliRunner

    from trainer.cli import app

    res = CliRunner().invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "plots" / "losses.png").stat().st_size > 1000
    assert (run / "plots" / "contrastive_vs_hours.png").exists()
    res = CliRunner().invoke(app, ["export-hf", str(run / "checkpoints" / "best.pt"), str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "preprocessor_config.json").exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_continues_the_same_losses_bit_for_bit(shards, tmp_path, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    common = dict(steps=20, log_every=1, ckpt_every=10, schedule="two_stage", seed=3)
    pretrain(tiny_args(shards, tmp_path / "straight", **common))
    pretrain(tiny_args(shards, tmp_path / "killed", stop_after=10, **common))
    assert [r["step"] for r in read_log(tmp_path / "killed")] == list(range(1, 11))
    pretrain(tiny_args(shards, tmp_path / "killed", resume=True, **common))
    straight, resumed = read_log(tmp_path / "straight"), read_log(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 21))
    for a, b in zip(straight[10:], resumed[10:]):
        for key in ("loss", "contrastive", "diversity", "l2", "accuracy", "temperature", "lr", "hours_seen"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "step_000000010.pt", weights_only=False)
    assert ckpt["data"]["batches_per_rank"] == 10 and "rng" in ckpt and "optimizer" in ckpt
    torch.set_num_threads(before)


def test_fresh_start_in_a_used_run_dir_is_refused(shards, tmp_path):
    """Without --resume, a run dir with checkpoints is not overwritten (its log would be lost)."""
    pretrain(tiny_args(shards, tmp_path / "run", steps=2, ckpt_every=2, log_every=1))
    log = (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="--resume"):
        pretrain(tiny_args(shards, tmp_path / "run", steps=2, ckpt_every=2, log_every=1))
    assert (tmp_path / "run" / "log.jsonl").read_text() == log


@pytest.mark.timeout(1800)
def test_sigkilled_run_resumes_to_the_same_log_and_weights(shards, tmp_path):
    """kill -9 between checkpoints (twice, at seeded points), rerun with --resume: every step is
    logged once, with the losses of an uninterrupted run, and the final weights are equal."""
    import random
    import signal
    import time

    from trainer.checkpoint import list_step_checkpoints

    def cmd(out):
        return [sys.executable, "-m", "trainer.cli", "pretrain", "--shards", shards["train"], "--out", str(out),
                "--config", "tiny", "--steps", "16", "--batch-seconds", "8", "--log-every", "1",
                "--ckpt-every", "4", "--schedule", "two_stage", "--seed", "3", "--num-workers", "0", "--quiet",
                "--resume"]

    def logged(run) -> list[int]:
        try:
            lines = (run / "log.jsonl").read_text().split("\n")[:-1]  # complete lines only
        except FileNotFoundError:
            return []
        return [json.loads(x)["step"] for x in lines if '"split": "train"' in x]

    def inode(path):
        try:
            return path.stat().st_ino
        except FileNotFoundError:
            return None

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "straight"), check=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    rng = random.Random(11)
    for _ in range(2):
        before = inode(killed / "log.jsonl")
        p = subprocess.Popen(cmd(killed), env=env, start_new_session=True)
        try:
            while p.poll() is None and inode(killed / "log.jsonl") == before:  # this run has (re)opened its log
                time.sleep(0.01)
            resumed_at = max([s for s, _ in list_step_checkpoints(killed)], default=0)
            target = resumed_at + rng.randint(2, 3)  # checkpoints every 4 steps: land in between
            while p.poll() is None and len(logged(killed)) < target:
                time.sleep(0.01)
            os.killpg(p.pid, signal.SIGSTOP)
            assert p.poll() is None, "the run finished before it could be killed"
            last_ckpt = max([s for s, _ in list_step_checkpoints(killed)], default=0)
            assert max(logged(killed)) > last_ckpt, "killed on a checkpoint: nothing to re-log"
            os.killpg(p.pid, signal.SIGKILL)
        finally:
            p.wait()
    subprocess.run(cmd(killed), check=True, env=env, timeout=600)
    straight, resumed = read_log(tmp_path / "straight"), read_log(killed)
    assert [r["step"] for r in resumed] == list(range(1, 17))
    for a, b in zip(straight, resumed):
        for key in ("loss", "contrastive", "diversity", "accuracy", "temperature", "lr", "hours_seen"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    final = [torch.load(d / "checkpoints" / "step_000000016.pt", weights_only=False)["model"]
             for d in (tmp_path / "straight", killed)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


DDP_WORKER = pretrain_worker("steps=2, batch_seconds=4.0, accumulation=2, log_every=1, ckpt_every=2")


def test_torchrun_two_processes_gloo_agree_on_weights(shards, tmp_path):
    proc, out, a, b = run_ddp_worker(DDP_WORKER, tmp_path, shards["train"], timeout=120)
    assert "global batch = 2 GPU(s) × 2 accumulation × 4 s = 16 s" in proc.stdout
    fresh = torch.load(out / "checkpoints" / "step_000000002.pt", weights_only=False)
    assert len(fresh["rng"]) == 2 and fresh["world_size"] == 2
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_simulate_hook(shards, tmp_path):
    calls = []

    def double_volume(utts, rng):
        calls.append(len(utts))
        for u in utts:
            u.audio = u.audio * 2.0
        return utts

    pretrain(tiny_args(shards, tmp_path / "custom", steps=2, log_every=1, transform=double_volume))
    assert len(calls) == 2 and all(n > 0 for n in calls)
    plain = pretrain(tiny_args(shards, tmp_path / "plain", steps=3, log_every=3))
    pytest.importorskip("corpus_tools.simulate", reason="the simulation module is another issue's deliverable")
    base = pretrain(tiny_args(shards, tmp_path / "baseline", steps=3, log_every=3, simulate="baseline"))
    assert base["hours_seen"] == plain["hours_seen"], "baseline leaves the audio as it is"
    concat = pretrain(tiny_args(shards, tmp_path / "concat", steps=3, log_every=3, simulate="1spk-concat"))
    # concat batches are formed on half the budget and the utterances doubled: fewer, longer rows
    assert concat["last_train"]["sim_utterances"] < base["last_train"]["sim_utterances"]
    assert base["last_train"]["sim_modified"] == 0


@pytest.fixture(scope="module")
def session_shards(tmp_path_factory) -> str:
    """Real speech in which every session has several utterances: two halves of pyannote's
    sample (two sessions) and the ALSA voices (one session)."""
    import polars as pl

    from corpus_tools.shards import write_shards

    rows = [dict(r, session="first" if i % 2 else "second")
            for i, r in enumerate(sample_pieces(sample_wav(), 0.0, 24, "p"))] + alsa_voice_rows(session="alsa")
    out = tmp_path_factory.mktemp("sessions")
    write_shards(pl.DataFrame(rows), out, samples_per_shard=16, progress=False)
    return str(out)


def test_online_concat_without_a_source_uses_the_training_shards_and_logs_it(session_shards, tmp_path):
    """1spk-concat with no --simulate-source: partners come from the training shards, every batch
    has modified utterances, and log.jsonl says how many."""
    pytest.importorskip("corpus_tools.simulate", reason="the simulation module is another issue's deliverable")
    run = tmp_path / "concat"
    pretrain(tiny_args({"train": session_shards}, run, steps=20, log_every=5, simulate="1spk-concat"))
    train = read_log(run)
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for r in train:
        assert r["sim_modified"] > 0 and r["sim_utterances"] >= r["sim_modified"], r
        assert r["sim_batches_unmodified"] == 0, r


def test_cli_help_and_bad_input(shards, tmp_path):
    from typer.testing import CliRunner

    from trainer.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--help"])
    assert res.exit_code == 0 and "--batch-seconds" in res.output and "--resume" in res.output
    res = runner.invoke(app, ["pretrain", "--shards", shards["train"], "--out", str(tmp_path / "x"), "--config",
                              "nope"])
    assert res.exit_code != 0 and "bundled configs" in res.output
    res = runner.invoke(app, ["pretrain", "--shards", str(tmp_path / "empty"), "--out", str(tmp_path / "x"),
                              "--config", "tiny"])
    assert res.exit_code != 0 and "no *.tar shards" in res.output
    (tmp_path / "notes.txt").write_text("not a shard\n")
    res = runner.invoke(app, ["pretrain", "--shards", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "x"),
                              "--config", "tiny"])
    assert res.exit_code == 2 and "is not a tar shard" in " ".join(res.output.replace("│", " ").split())
    res = runner.invoke(app, ["pretrain", "--shards", shards["train"], "--out", str(tmp_path / "x"), "--lr", "fast"])
    assert res.exit_code != 0 and "neither a number" in res.output
    res = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no log.jsonl" in res.output
    # --lr auto = 5e-4·sqrt(s/6000) of the global batch; printed at start.
    res = runner.invoke(app, ["pretrain", "--shards", shards["train"], "--out", str(tmp_path / "auto"), "--config",
                              "tiny", "--steps", "1", "--lr", "auto", "--batch-seconds", "6", "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    assert "global batch = 1 GPU(s) × 1 accumulation × 6 s = 6 s" in res.output and "peak LR 1.58e-05" in res.output
