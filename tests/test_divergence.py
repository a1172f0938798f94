"""Divergence is detected: a step whose loss or gradient norm is not finite is not applied and is
counted; too many of them stop the run with "diverged at step S" (exit 3), log.jsonl says
`diverged: true`, and no checkpoint holds non-finite weights. Also under bf16 autocast, in
fine-tuning and under DDP (the ranks agree); `corpus report` marks diverged runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from corpora import cli, pretrain_worker, read_log, run_ddp_worker, sample_shards, torchrun

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return sample_shards(tmp_path_factory.mktemp("div-shards") / "train", 24, "dv", 12, text="yes no")


def all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_lr_1e3_stops_as_diverged(shards, tmp_path):
    """The user's case: `--lr 1e3` logged `loss nan` for every step, saved NaN weights and exited 0."""
    run = tmp_path / "run"
    proc = cli("trainer.cli", "pretrain", "--shards", shards, "--out", str(run), "--config", "tiny", "--steps", "80",
               "--lr", "1e3", "--batch-seconds", "8", "--log-every", "5", "--ckpt-every", "2",
               "--keep-checkpoints", "100", "--num-workers", "0")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert "done" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    m = re.match(r"error: diverged at step (\d+)", last)
    assert m, last
    step = int(m.group(1))
    assert step < 80
    marked = [r for r in read_log(run) if r.get("diverged")]
    assert len(marked) == 1 and marked[0]["step"] == step, marked
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert train[-1]["skipped_steps_total"] >= 20
    files = sorted((run / "checkpoints").glob("*.pt"))
    assert files, "checkpoints before the divergence are kept"
    for f in files:
        assert all_finite(f), f"{f.name} holds non-finite weights"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_divergence_is_detected_under_autocast(shards, tmp_path, precision):
    from trainer.guard import DivergedError
    from trainer.pretrain import PretrainArgs, pretrain

    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged at step \d+"):
        pretrain(PretrainArgs(shards=shards, out=str(run), config="tiny", steps=80, lr=1e3, batch_seconds=8.0,
                              precision=precision, log_every=10, ckpt_every=4, keep_checkpoints=100,
                              num_workers=0, quiet=True, max_bad_steps=5))
    assert [r for r in read_log(run) if r.get("diverged")]
    for f in (run / "checkpoints").glob("*.pt"):
        assert all_finite(f), f.name


@pytest.mark.slow
def test_one_non_finite_step_is_skipped_not_applied(shards, tmp_path):
    """NaN audio in the 4th batch (after the reader's checks, through a transform): step 4 changes
    no weight and no optimizer state, is counted, and training goes on. The step counter (and with
    it the schedule, τ and the data position) advances as in any run."""
    from trainer.pretrain import PretrainArgs, pretrain

    calls = []

    def nan_in_fourth(utts, rng):
        calls.append(1)
        if len(calls) == 4:
            utts[0].audio = np.full_like(utts[0].audio, np.nan)
        return utts

    run = tmp_path / "run"
    result = pretrain(PretrainArgs(shards=shards, out=str(run), config="tiny", steps=8, batch_seconds=8.0,
                                   log_every=4, ckpt_every=1, keep_checkpoints=100, num_workers=0, quiet=True,
                                   transform=nan_in_fourth))
    assert result["step"] == 8
    before = torch.load(run / "checkpoints" / "step_000000003.pt", weights_only=False)
    after = torch.load(run / "checkpoints" / "step_000000004.pt", weights_only=False)
    for k, v in before["model"].items():  # the gumbel τ is a function of the step, which advances
        assert k == "quantizer.temperature" or torch.equal(v, after["model"][k]), k
    for pid, s in before["optimizer"]["state"].items():
        for name, v in s.items():
            assert torch.equal(v, after["optimizer"]["state"][pid][name]), (pid, name)
    nxt = torch.load(run / "checkpoints" / "step_000000005.pt", weights_only=False)
    assert not torch.equal(nxt["model"]["project_context.weight"], after["model"]["project_context.weight"])
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert [r["skipped_steps"] for r in train] == [0, 0, 0, 1, 0, 0, 0, 0]  # logged at every checkpoint
    assert train[-1]["skipped_steps_total"] == 1
    assert "loss" not in train[3], "no update applied at step 4: no training metrics"
    assert all(np.isfinite(r["loss"]) for r in train if r["step"] != 4)
    assert not any(r.get("diverged") for r in train)


def test_stop_rules():
    """N bad steps in a row, or half of the last 100."""
    from trainer.guard import StepGuard

    g = StepGuard(max_bad_steps=20)
    assert all(g.record(False) is None for _ in range(19))
    assert "20 steps in a row" in g.record(False)
    g = StepGuard(max_bad_steps=20)
    verdicts = [g.record(i % 2 == 0) for i in range(100)]
    assert verdicts[:99] == [None] * 99 and "50 of the last 100" in verdicts[99], verdicts[-3:]
    g = StepGuard(max_bad_steps=20)
    assert all(g.record(i % 3 != 0) is None for i in range(1000)), "a third of the steps bad: keep going"
    off = StepGuard(max_bad_steps=0)
    assert all(off.record(False) is None for _ in range(200))


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path):
    from trainer.guard import DivergedError, check_finite_weights
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    check_finite_weights(model, step=7)
    with torch.no_grad():
        model.project_context.weight[0, 0] = float("inf")
    with pytest.raises(DivergedError, match="diverged at step 7"):
        check_finite_weights(model, step=7)


@pytest.mark.slow
def test_finetune_diverges_with_one_line(shards, tmp_path):
    from trainer.model import Wav2Vec2ForPreTraining, load_config
    from trainer.checkpoint import atomic_save

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    atomic_save({"config": model.cfg.to_dict(), "model": model.state_dict()}, tmp_path / "init.pt")
    run = tmp_path / "ft"
    proc = cli("trainer.cli", "finetune", "--train", shards, "--init", str(tmp_path / "init.pt"), "--out", str(run),
               "--steps", "60", "--lr", "1e4", "--batch-seconds", "8", "--freeze-transformer-steps", "0",
               "--log-every", "5", "--ckpt-every", "3", "--keep-checkpoints", "100", "--num-workers", "0",
               "--max-bad-steps", "5")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert re.match(r"error: diverged at step \d+", proc.stderr.strip().splitlines()[-1])
    assert [r for r in read_log(run) if r.get("diverged")]
    for f in (run / "checkpoints").glob("*.pt"):
        assert all_finite(f), f.name


DDP_WORKER = pretrain_worker("steps=4, batch_seconds=6.0, log_every=2, ckpt_every=4, transform=nan_on_rank1_step2", """
    def nan_on_rank1_step2(utts, rng):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 2:
            utts[0].audio = np.full_like(utts[0].audio, np.nan)
        return utts
""")


@pytest.mark.slow
def test_torchrun_ranks_agree_to_skip(shards, tmp_path):
    """A non-finite loss on rank 1 only: both ranks skip that step and keep equal weights."""
    _, out, a, b = run_ddp_worker(DDP_WORKER, tmp_path, shards, timeout=240)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.isfinite(a[key]).all(), key
    train = [r for r in read_log(out) if r["split"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in train] == [(2, 1), (4, 0)], train


@pytest.mark.slow
def test_torchrun_ranks_stop_together_when_diverged(shards, tmp_path):
    """`--lr 1e3` under torchrun (2 gloo ranks): both ranks stop at the same step, no hang, the
    diverged line once (rank 0), a non-zero exit and finite weights in every checkpoint."""
    run = tmp_path / "ddp"
    proc = torchrun("-m", "trainer.cli", "pretrain", "--shards", shards, "--out", str(run), "--config", "tiny",
                    "--steps", "60", "--lr", "1e3", "--batch-seconds", "6", "--log-every", "5", "--ckpt-every", "2",
                    "--keep-checkpoints", "100", "--num-workers", "0", "--max-bad-steps", "5", timeout=240)
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [x for x in proc.stderr.splitlines() if "error: diverged at step" in x]
    assert len(lines) == 1, proc.stderr[-3000:]
    marked = [r for r in read_log(run) if r.get("diverged")]
    assert len(marked) == 1 and f"step {marked[0]['step']}:" in lines[0], (marked, lines)
    for f in (run / "checkpoints").glob("*.pt"):
        assert all_finite(f), f.name


def test_report_marks_diverged_runs(tmp_path):
    """`corpus report` marks a diverged run like the thesis' tables: DIV / ∗."""
    from corpus_tools.runs import run_summary

    ok = [{"split": "train", "step": 10, "loss": 3.0, "contrastive": 2.0, "hours_seen": 0.1},
          {"split": "val", "step": 10, "loss": 2.5}]
    div = ok[:1] + [{"split": "val", "step": 10, "loss": 2.5},
                    {"split": "train", "step": 14, "loss": 3.1, "contrastive": 2.1, "diverged": True,
                     "hours_seen": 0.12}]
    assert "DIV" not in " ".join(run_summary(tmp_path / "a", ok)) and "∗" not in " ".join(run_summary(tmp_path / "a", ok))
    row = run_summary(tmp_path / "b", div)
    assert "∗" in row[-1] and "14" in " ".join(row), row
    never = [{"split": "train", "step": 3, "loss": 9.0, "diverged": True}]
    assert "DIV" in " ".join(run_summary(tmp_path / "c", never))
