"""Checkpoints a long run can trust: resume from the newest one that loads (damaged ones set
aside, not deleted), a full disk during a save keeps the previous checkpoint and ends with one
line, and every checkpoint we read (ours, fairseq `.pt`, HF `pytorch_model.bin`) is opened with
``weights_only=True``: a pickle that would run code is refused, naming --trust-checkpoint.
"""

from __future__ import annotations

import errno
import fractions
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from corpora import cli, sample_shards

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return sample_shards(tmp_path_factory.mktemp("ckpt-shards") / "train", 24, "ck", 12, text="hello world")


def tiny(shards, out, **kw):
    from trainer.pretrain import PretrainArgs

    base = dict(shards=shards, out=str(out), config="tiny", batch_seconds=6.0, quiet=True, num_workers=0,
                schedule="two_stage", seed=5, log_every=1)
    base.update(kw)
    return PretrainArgs(**base)


def train_losses(run) -> dict[int, float]:
    recs = [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["split"] == "train"}


def flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


# -- resume from the newest readable checkpoint -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "wrong content"])
def test_resume_sets_a_damaged_newest_checkpoint_aside(shards, tmp_path, damage):
    """The newest checkpoint is cut short (or is not a training checkpoint): `--resume` reports it,
    renames it to .damaged and continues from the previous one, with the losses of a run that
    was never interrupted."""
    from trainer.pretrain import pretrain

    pretrain(tiny(shards, tmp_path / "straight", steps=8, ckpt_every=2))
    run = tmp_path / "run"
    pretrain(tiny(shards, run, steps=8, ckpt_every=2, keep_checkpoints=3, stop_after=6))
    newest = run / "checkpoints" / "step_000000006.pt"
    if damage == "truncated":
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"hello": "world"}, newest)
    proc = cli("trainer.cli", "pretrain", "--shards", shards, "--out", str(run), "--config", "tiny", "--steps", "8",
               "--batch-seconds", "6", "--ckpt-every", "2", "--keep-checkpoints", "3", "--schedule", "two_stage",
               "--seed", "5", "--log-every", "1", "--num-workers", "0", "--resume")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = flat(proc.stdout + proc.stderr)
    assert "step_000000006.pt" in said and "step_000000006.pt.damaged" in said, said[-2000:]
    assert "resumed from" in said and "step_000000004.pt" in said, said[-2000:]
    assert (run / "checkpoints" / "step_000000006.pt.damaged").exists()
    assert train_losses(run) == train_losses(tmp_path / "straight")


@pytest.mark.slow
def test_resume_with_only_damaged_checkpoints_is_refused(shards, tmp_path):
    from trainer.pretrain import pretrain

    run = tmp_path / "run"
    pretrain(tiny(shards, run, steps=2, ckpt_every=2))
    (run / "checkpoints" / "step_000000002.pt").write_bytes(b"PK\x03\x04 cut")
    log = (run / "log.jsonl").read_text()
    for _ in range(2):  # the second attempt finds only the .damaged file: still no fresh start
        with pytest.raises(ValueError, match="damaged"):
            pretrain(tiny(shards, run, steps=4, ckpt_every=2, resume=True))
    assert (run / "log.jsonl").read_text() == log, "the log of the damaged run is kept"


@pytest.mark.slow
def test_a_damaged_init_or_ckpt_is_one_line(shards, tmp_path):
    """--init / --ckpt / export of a truncated file: one error line naming it, exit 2."""
    from trainer.cli import app
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    good = tmp_path / "good.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    for args in (["pretrain", "--shards", shards, "--out", str(tmp_path / "p"), "--config", "tiny", "--steps", "1",
                  "--init", str(cut), "--num-workers", "0"],
                 ["evaluate", "--ckpt", str(cut), "--shards", shards, "--out", str(tmp_path / "e")],
                 ["export-hf", str(cut), str(tmp_path / "hf")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (args[0], repr(res.exception))
        assert "cannot read" in flat(res.output) and "cut.pt" in flat(res.output), res.output


# -- a full disk while saving -------------------------------------------------------------


def _fail_second_save(monkeypatch):
    """torch.save that writes part of the second checkpoint, then fails as a full disk does."""
    real = torch.save
    calls = []

    def save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) != 2:
            return real(obj, f, *a, **kw)
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04 partial")
        else:
            f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
def test_full_disk_during_save_keeps_the_previous_checkpoint(shards, tmp_path, monkeypatch):
    from trainer.cli import app

    _fail_second_save(monkeypatch)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", "--shards", shards, "--out", str(run), "--config", "tiny",
                                   "--steps", "6", "--batch-seconds", "6", "--ckpt-every", "2",
                                   "--keep-checkpoints", "1", "--num-workers", "0", "--quiet"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    out = flat(res.output)
    assert "no space left on device" in out.lower() and "step_000000002.pt" in out, out
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["step_000000002.pt"], files  # the temp file removed, nothing pruned
    monkeypatch.undo()
    from trainer.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "step_000000002.pt")["step"] == 2


@pytest.mark.slow
def test_full_tmpfs_during_save(shards, tmp_path):
    """The same on a real full file system (a 2 MiB tmpfs holds one tiny checkpoint, not two)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a tmpfs")
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(ckpts)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    try:
        proc = cli("trainer.cli", "pretrain", "--shards", shards, "--out", str(tmp_path / "run"), "--config", "tiny",
                   "--steps", "6", "--batch-seconds", "6", "--ckpt-every", "2", "--keep-checkpoints", "1",
                   "--num-workers", "0", "--quiet")
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.returncode != 0
        assert "no space left" in proc.stderr.lower(), proc.stderr[-2000:]
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_000000002.pt"]
        torch.load(ckpts / "step_000000002.pt", weights_only=True)
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], capture_output=True)


# -- safe loading -------------------------------------------------------------------------


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil(tmp_path) -> tuple[Path, Path]:
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    marker = tmp_path / "code-ran"
    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    path = tmp_path / "evil.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict(), "kind": "ctc",
                "vocab": ["<blank>"], "payload": RunsCode(marker)}, path)
    assert not marker.exists()
    return path, marker


@pytest.mark.slow
def test_a_pickle_that_runs_code_is_refused_everywhere(evil, shards, tmp_path):
    from trainer.cli import app

    path, marker = evil
    runner = CliRunner()
    commands = {
        "pretrain --init": ["pretrain", "--shards", shards, "--out", str(tmp_path / "p"), "--config", "tiny",
                            "--steps", "1", "--init", str(path), "--num-workers", "0"],
        "finetune --init": ["finetune", "--train", shards, "--out", str(tmp_path / "f"), "--steps", "1",
                            "--init", str(path), "--num-workers", "0"],
        "evaluate --ckpt": ["evaluate", "--ckpt", str(path), "--shards", shards, "--out", str(tmp_path / "e")],
        "export-hf": ["export-hf", str(path), str(tmp_path / "hf")],
        "export-hf-ctc": ["export-hf-ctc", str(path), str(tmp_path / "hfc")],
    }
    for name, args in commands.items():
        res = runner.invoke(app, args)
        assert not marker.exists(), f"{name}: loading the checkpoint ran its code"
        assert res.exit_code != 0 and isinstance(res.exception, SystemExit), (name, repr(res.exception))
        assert "--trust-checkpoint" in flat(res.output), (name, res.output)


@pytest.mark.slow
def test_a_pickle_in_the_run_dir_is_not_run_on_resume(evil, shards, tmp_path):
    from trainer.pretrain import pretrain

    path, marker = evil
    run = tmp_path / "run"
    pretrain(tiny(shards, run, steps=2, ckpt_every=2))
    (run / "checkpoints" / "step_000000004.pt").write_bytes(path.read_bytes())
    with pytest.raises(Exception, match="--trust-checkpoint"):
        pretrain(tiny(shards, run, steps=6, ckpt_every=2, resume=True))
    assert not marker.exists()


@pytest.mark.slow
def test_trust_checkpoint_opts_in(shards, tmp_path):
    """A checkpoint holding a type outside the allow-list: refused, loaded with --trust-checkpoint."""
    from trainer.cli import app
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    path = tmp_path / "fraction.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict(),
                "stats": fractions.Fraction(1, 3)}, path)
    base = ["pretrain", "--shards", shards, "--config", "tiny", "--steps", "1", "--batch-seconds", "6",
            "--init", str(path), "--num-workers", "0", "--quiet"]
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--trust-checkpoint" in flat(res.output) and "fractions.Fraction" in flat(res.output), \
        res.output
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), "--trust-checkpoint"])
    assert res.exit_code == 0, res.output


@pytest.fixture()
def load_spy(monkeypatch):
    """Record the weights_only flag of every torch.load call."""
    real = torch.load
    flags = []

    def spy(*a, **kw):
        flags.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    return flags


def test_fairseq_checkpoint_with_omegaconf_cfg_loads_weights_only(tmp_path, load_spy):
    """A fairseq-style checkpoint as fairseq writes it: an omegaconf DictConfig `cfg` (nested
    w2v_args for a CTC model), numpy scalars in extra_state, optimizer history; and a legacy one
    with argparse `args`. All load with weights_only=True and give the reference model's output."""
    import argparse

    from omegaconf import OmegaConf

    from test_model import FAIRSEQ_TINY, randomise, speech_like, tiny_cfg, to_fairseq_state
    from trainer.hf import load_pretrained
    from trainer.model import Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    ref = Wav2Vec2ForPreTraining(tiny_cfg(conv_padding="none", activation="gelu")).eval()
    randomise(ref)
    fs = to_fairseq_state(ref)
    model_cfg = {"_name": "wav2vec2", **FAIRSEQ_TINY, "latent_temp": [2.0, 0.5, 0.999995], "dropout": 0.1,
                 "activation_fn": "gelu", "quantize_targets": True}
    extra = {"train_iterator": {"epoch": 3, "iterations_in_epoch": 10, "shuffle": True},
             "metrics": {"train": [("loss", "loss", "AverageMeter", {"val": np.float64(2.5), "count": 7})]},
             "previous_training_time": np.float64(1234.5)}
    history = [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None}, "num_updates": 400_000}]
    pre = {"cfg": OmegaConf.create({"_name": None, "common": {"fp16": True, "seed": 1}, "model": model_cfg,
                                    "task": {"_name": "audio_pretraining", "data": "/manifests", "labels": None}}),
           "args": None, "model": fs, "extra_state": extra, "optimizer_history": history,
           "last_optimizer_state": None}
    torch.save(pre, tmp_path / "pre.pt")
    ctc = {"cfg": OmegaConf.create({"model": {"_name": "wav2vec_ctc", "w2v_path": "/x/pre.pt",
                                              "w2v_args": {"model": model_cfg, "task": {"data": "/m"}}}}),
           "args": None, "model": {**{f"w2v_encoder.w2v_model.{k}": v for k, v in fs.items()},
                                   "w2v_encoder.proj.weight": torch.zeros(5, 32)},
           "extra_state": extra}
    torch.save(ctc, tmp_path / "ctc.pt")
    legacy_args = argparse.Namespace(**{k: v for k, v in FAIRSEQ_TINY.items()}, arch="wav2vec2")
    torch.save({"args": legacy_args, "model": fs, "extra_state": extra}, tmp_path / "legacy.pt")
    audio = speech_like(1, 9000)
    for name in ("pre.pt", "ctc.pt", "legacy.pt"):
        load_spy.clear()
        got = load_pretrained(tmp_path / name).eval()
        assert load_spy and all(flag is True for flag in load_spy), (name, load_spy)
        with torch.no_grad():
            assert torch.allclose(got.wav2vec2(audio)["context"], ref.wav2vec2(audio)["context"], atol=1e-6), name
        assert got.cfg.temperature == [2, 0.5, 0.999995]


@pytest.mark.slow
def test_hf_bin_and_our_checkpoints_load_weights_only(shards, tmp_path, load_spy):
    """HF `pytorch_model.bin`, our training checkpoints (plain types only, no numpy objects) and
    checkpoints of the earlier format (numpy RNG state) all load with weights_only=True."""
    from transformers import Wav2Vec2ForPreTraining as HFPre

    from trainer.checkpoint import load_checkpoint, set_rng_state
    from trainer.hf import load_pretrained, to_hf_config
    from trainer.model import Wav2Vec2ForPreTraining, load_config
    from trainer.pretrain import pretrain

    pretrain(tiny(shards, tmp_path / "run", steps=2, ckpt_every=2))
    path = tmp_path / "run" / "checkpoints" / "step_000000002.pt"
    load_spy.clear()
    ckpt = load_checkpoint(path)
    assert load_spy == [True]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], "plain types only"
    # the earlier format: numpy's legacy RNG tuple
    old = dict(ckpt, rng=[dict(ckpt["rng"][0], numpy=np.random.get_state())])
    torch.save(old, tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt")
    state = np.random.get_state()
    np.random.random(3)
    set_rng_state(back["rng"][0])
    assert (np.random.get_state()[1] == state[1]).all()

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    hf_cfg = to_hf_config(model.cfg)
    HFPre(hf_cfg).save_pretrained(tmp_path / "hf", safe_serialization=False)
    assert (tmp_path / "hf" / "pytorch_model.bin").exists()
    load_spy.clear()
    load_pretrained(tmp_path / "hf")
    assert load_spy and all(flag is True for flag in load_spy), load_spy
