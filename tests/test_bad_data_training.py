"""Bad data during training and evaluation: `trainer pretrain` (single process and DDP),
`trainer finetune` and `trainer evaluate` skip damaged members and truncated shards, name them
once and count them in log.jsonl / the summary; a wrong folder stops at --max-bad-fraction
with one line. Each CLI run is checked for its exit code and for no traceback.

The shards hold real speech (pieces of pyannote's sample.wav; espeak-ng words for the labelled
set), damaged by ``tests/shard_damage.py``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from corpora import cli, pretrain_worker, read_log, run_ddp_worker
from shard_damage import keys_of, replace_member, wrong_folder

pytestmark = pytest.mark.slow  # every test trains (in a subprocess or under torchrun)
torch.set_num_threads(1)


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]


def error_lines(stderr: str) -> list[str]:
    """stderr without the per-utterance warnings (and the harmless library noise)."""
    return [line for line in stderr.splitlines() if line.strip() and "warning" not in line.lower()]


# -- trainer pretrain -----------------------------------------------------------------------


def test_pretrain_cli_trains_through_damaged_shards(damaged, tmp_path):
    """`trainer pretrain` meets every damage, warns once per bad member and per truncated shard,
    counts them in log.jsonl and finishes."""
    run = tmp_path / "run"
    proc = cli("trainer.cli", "pretrain", "--shards", damaged["dir"], "--out", str(run), "--config", "tiny",
               "--steps", "30", "--batch-seconds", "8", "--log-every", "5", "--ckpt-every", "15",
               "--num-workers", "0", "--max-bad-fraction", "0.5")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: step 30" in proc.stdout
    warned = [line for line in proc.stderr.splitlines() if "skipped" in line]
    for key in damaged["bad"]:
        assert len([w for w in warned if key in w]) == 1, (key, warned)
    assert len([w for w in warned if damaged["truncated"] in w and "truncated" in w]) == 1, warned
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert sum(r["bad_utterances"] for r in train) == train[-1]["bad_utterances_total"] >= 4
    assert train[-1]["bad_shards_total"] >= 1
    assert all(r["utterances_seen_total"] > 0 for r in train)


@pytest.mark.parametrize("what", ["audio", "json"])
def test_wrong_folder_stops_at_the_limit_with_one_line(clean, tmp_path, what):
    """A folder of valid tars whose audio (or json) is garbage: not silently trained on."""
    bad = wrong_folder(clean, tmp_path / "wrong", what)
    run = tmp_path / "run"
    proc = cli("trainer.cli", "pretrain", "--shards", str(bad), "--out", str(run), "--config", "tiny",
               "--steps", "20", "--batch-seconds", "8", "--num-workers", "0")
    assert_no_traceback(proc)
    assert proc.returncode != 0
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and errors[0].startswith("error:"), proc.stderr[-3000:]
    assert "--max-bad-fraction" in errors[0] and "bad" in errors[0], errors[0]
    assert "done" not in proc.stdout
    assert not list((run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").exists() else True


DDP_WORKER = pretrain_worker("steps=6, batch_seconds=6.0, accumulation=2, log_every=3, ckpt_every=6, "
                             "max_bad_fraction=0.5, transform=empty_second_batch_on_rank1", """
    def empty_second_batch_on_rank1(utts, rng):
        calls.append(1)
        return [] if (os.environ["RANK"] == "1" and len(calls) == 2) else utts
""")


def test_torchrun_ranks_stay_in_step_when_one_skips(damaged, tmp_path):
    """2 ranks (gloo) over damaged shards, one rank with a wholly empty micro-batch: no hang, the
    same weights on both ranks, the bad utterances of both ranks counted."""
    _, out, a, b = run_ddp_worker(DDP_WORKER, tmp_path, damaged["dir"], timeout=240)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.isfinite(a[key]).all(), key
    train = [r for r in read_log(out) if r["split"] == "train"]
    assert [r["step"] for r in train] == [3, 6]
    assert train[-1]["utterances_seen_total"] > 0


# -- trainer finetune / evaluate ------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict:
    """espeak-ng command words in shards, two members damaged, and a random tiny CTC init."""
    import itertools

    import polars as pl

    from corpus_tools.shards import write_shards
    from shard_damage import copy_shards
    from test_finetune import WORDS, _rows
    from trainer.checkpoint import atomic_save
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    root = tmp_path_factory.mktemp("labelled")
    df = pl.DataFrame(_rows(root, list(itertools.permutations(WORDS, 2))[:16], "tr"))
    write_shards(df, root / "clean", samples_per_shard=8, progress=False)
    bad = copy_shards(root / "clean", root / "damaged")
    first = sorted(bad.glob("*.tar"))[0]
    k1, k2 = keys_of(first)[:2]
    replace_member(first, f"{k1}.wav", b"RIFF" + bytes(40))
    replace_member(first, f"{k2}.json", b"[1, 2")
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    atomic_save({"config": model.cfg.to_dict(), "model": model.state_dict()}, root / "tiny.pt")
    return {"clean": str(root / "clean"), "damaged": str(bad), "bad": {k1, k2}, "init": str(root / "tiny.pt"),
            "n": df.height}


def test_finetune_and_evaluate_skip_and_count(labelled, tmp_path):
    run = tmp_path / "ft"
    proc = cli("trainer.cli", "finetune", "--train", labelled["damaged"], "--init", labelled["init"], "--out",
               str(run), "--steps", "12", "--batch-seconds", "6", "--freeze-transformer-steps", "4",
               "--log-every", "4", "--num-workers", "0", "--max-bad-fraction", "0.5")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert train[-1]["bad_utterances_total"] >= 1
    proc = cli("trainer.cli", "evaluate", "--ckpt", str(run), "--shards", f"dmg={labelled['damaged']}",
               "--out", str(tmp_path / "eval"), "--quiet")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "summary.json").read_text())[0]
    assert row["bad_utterances"] == 2 and row["utterances"] == labelled["n"] - 2, row
    for key in labelled["bad"]:
        assert key in proc.stderr, proc.stderr[-2000:]


def test_finetune_on_a_wrong_folder_stops_with_one_line(labelled, tmp_path):
    bad = wrong_folder(labelled["clean"], tmp_path / "wrong", "audio")
    proc = cli("trainer.cli", "finetune", "--train", str(bad), "--init", labelled["init"], "--out",
               str(tmp_path / "ft"), "--steps", "12", "--batch-seconds", "6", "--num-workers", "0")
    assert_no_traceback(proc)
    assert proc.returncode != 0
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "--max-bad-fraction" in errors[0], proc.stderr[-3000:]
