"""Bad data in shards is skipped, counted and named, never fatal: corrupt, NaN, empty and
json-broken members and truncated shards, through the reader (batch positions kept for exact
resume, skip events carried out of DataLoader workers), the --max-bad-fraction tally and
`corpus verify`. The training side is in tests/test_bad_data_training.py.

The shards hold real speech (pieces of pyannote's sample.wav), damaged by ``tests/shard_damage.py``.
"""

from __future__ import annotations

import re

import pytest
import torch

from shard_damage import wrong_folder

torch.set_num_threads(1)


def skipped_of(batches) -> list[dict]:
    return [e for b in batches for e in getattr(b, "skipped", [])]


# -- the reader ---------------------------------------------------------------------------


def test_stream_skips_every_kind_of_bad_member_and_names_it(damaged):
    """One epoch over the damaged folder: every good utterance once, every bad one skipped with
    one event naming its shard, key and reason; the truncated shard keeps what precedes the cut."""
    from corpus_tools.data.stream import ShardBatchStream

    batches = list(ShardBatchStream(damaged["dir"], 8.0, infinite=False, shuffle=False))
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(damaged["good"])
    events = skipped_of(batches)
    utt = {e["key"]: e for e in events if e["kind"] == "utterance"}
    assert sorted(utt) == sorted(damaged["bad"]), events
    for key, word in damaged["bad"].items():
        assert word in utt[key]["reason"], utt[key]
        assert utt[key]["shard"].endswith(".tar") and "\n" not in utt[key]["reason"]
    shards = [e for e in events if e["kind"] == "shard"]
    assert len(shards) == 1 and shards[0]["shard"].endswith(damaged["truncated"]), shards
    for b in batches:
        assert b.audio.shape[0] == len(b.keys) == len(b.lengths) == len(b.meta)
        assert torch.isfinite(b.audio).all()


def test_a_wholly_bad_batch_is_an_empty_batch_at_its_index(clean, tmp_path):
    """Garbage audio behind valid json: the batches keep their positions (exact resume counts
    batches), each one empty and carrying its skip events."""
    from corpus_tools.data.stream import ShardBatchStream

    bad = wrong_folder(clean, tmp_path / "wrong", "audio")
    ref = list(ShardBatchStream(clean, 8.0, infinite=False, seed=2))
    got = list(ShardBatchStream(str(bad), 8.0, infinite=False, seed=2))
    assert len(got) == len(ref)
    for r, g in zip(ref, got):
        assert len(g) == 0 and g.audio.shape[0] == 0 and g.seconds == 0.0
        assert sorted(e["key"] for e in g.skipped) == sorted(r.keys)
    resumed = list(ShardBatchStream(str(bad), 8.0, infinite=False, seed=2, start_batch=3))
    assert [sorted(e["key"] for e in b.skipped) for b in resumed] == \
           [sorted(e["key"] for e in b.skipped) for b in got[3:]]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_over_bad_members(damaged, workers):
    """An infinite stream over damaged shards resumed at batch 7 continues with the same
    batches and the same skip events, also through DataLoader worker processes."""
    from corpus_tools.data.stream import ShardBatchStream, make_loader

    def take(start: int, n: int):
        it = iter(make_loader(ShardBatchStream(damaged["dir"], 6.0, seed=4, start_batch=start), workers))
        out = [next(it) for _ in range(n)]
        return [(b.keys, [(e["shard"], e["key"], e["reason"]) for e in b.skipped]) for b in out]

    full = take(0, 40)
    assert any(s for _, s in full), "the first 40 batches must meet some damage"
    assert take(7, 33) == full[7:]


def test_bad_fraction_limit_has_a_floor():
    """--max-bad-fraction is a share of the utterances read, with 10,000 as the smallest
    denominator: a few early bad files do not stop a run, a wrong folder stops it at once."""
    from corpus_tools.bad_data import BadDataTally

    t = BadDataTally(max_fraction=0.001)
    t.add(good=100, bad=10)
    assert t.exceeded() is None
    t.add(bad=1)
    assert "11 of 111" in t.exceeded()
    big = BadDataTally(max_fraction=0.001)
    big.add(good=1_998_000, bad=1999)
    assert big.exceeded() is None
    big.add(bad=2)
    assert big.exceeded() is not None
    shards = BadDataTally(max_fraction=0.001)
    shards.add(bad_shards=11)
    assert shards.exceeded() is not None, "an unreadable shard counts as one bad utterance"
    off = BadDataTally(max_fraction=1.0)
    off.add(bad=50)
    assert off.exceeded() is None, "--max-bad-fraction 1 never stops"


# -- corpus verify --------------------------------------------------------------------------


def test_verify_reports_every_bad_member_and_the_truncated_shard(damaged):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    res = CliRunner().invoke(app, ["verify", damaged["dir"]])
    out = " ".join(res.output.split())
    assert res.exit_code != 0, out
    assert "Traceback" not in out and isinstance(res.exception, SystemExit), repr(res.exception)
    for key, word in damaged["bad"].items():
        assert re.search(rf"{re.escape(key)}\S* [^;]*{word}", out, re.I), (key, word, out[-3000:])
    assert re.search(rf"{re.escape(damaged['truncated'])}: [^;]*truncated", out, re.I), out[-3000:]
