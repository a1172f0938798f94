"""Dev and test data are never degraded and never written into training shards.

A LibriSpeech root with train-clean-100, dev-clean and test-clean folders (the builder of
tests/test_importers.py) goes through the importers, `corpus shard`, `corpus simulate` and the
online Simulator; `corpus holdout` makes a validation split for corpora without one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from corpus_tools import importers as imp
from corpus_tools.cli import app
from corpus_tools.manifests import read_segments
from corpora import (LS_SPEAKERS_TXT, commonvoice, cv_row, librispeech, mls, mp3_tone, shard_utterances,
                     tone)

SR = 16_000
LS_SUBSETS = {
    "train-clean-100": {("19", "198"): ["HELLO WORLD", "SECOND ONE", "THIRD ONE"],
                        ("26", "495"): ["FOURTH", "FIFTH"], ("27", "123"): ["SIXTH ALONE"]},
    "dev-clean": {("84", "121"): ["DEV ONE", "DEV TWO"], ("174", "50"): ["DEV THREE"]},
    "test-clean": {("61", "70"): ["TEST ONE", "TEST TWO"], ("121", "127"): ["TEST THREE"]},
}


def ids_of(subset: str) -> set[str]:
    return {f"{spk}-{ch}-{i:04d}" for (spk, ch), texts in LS_SUBSETS[subset].items()
            for i in range(len(texts))}


TRAIN, DEV, TEST = ids_of("train-clean-100"), ids_of("dev-clean"), ids_of("test-clean")


@pytest.fixture(scope="module")
def ls_root(tmp_path_factory) -> Path:
    return librispeech(tmp_path_factory.mktemp("lsroot") / "LibriSpeech", LS_SUBSETS, speakers=LS_SPEAKERS_TXT)


@pytest.fixture(scope="module")
def ls_manifest(ls_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lsman") / "ls.parquet"
    res = CliRunner().invoke(app, ["import", "librispeech", str(ls_root), "-o", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def shard_members(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """json id -> (audio, json) of every utterance in the folder's tar shards."""
    return {meta["id"]: (audio, meta) for audio, meta in shard_utterances(folder).values()}


def one_line(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


# -- importers ------------------------------------------------------------------------------


def test_librispeech_split_from_the_subset_folder(ls_root):
    df = imp.import_librispeech(ls_root)
    got = dict(zip(df["segment_id"], df["split"]))
    assert {k for k, v in got.items() if v == "train"} == TRAIN
    assert {k for k, v in got.items() if v == "dev"} == DEV
    assert {k for k, v in got.items() if v == "test"} == TEST
    assert dict(zip(df["segment_id"], df["subset"]))["84-121-0001"] == "dev-clean"
    assert set(imp.import_librispeech(ls_root / "test-clean")["split"]) == {"test"}


def test_mls_split_from_the_split_folder(tmp_path):
    root = mls(tmp_path / "mls_dutch", {split: [("10", str(len(split)), 1, "zin", partial(tone, seconds=1.0))]
                                        for split in ("train", "dev", "test")})
    df = imp.import_mls(root)
    assert dict(zip(df["segment_id"], df["split"])) == {
        "10_5_000001": "train", "10_3_000001": "dev", "10_4_000001": "test"}


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory) -> Path:
    """validated.tsv lists every clip, as in a real release; dev/test.tsv list some of them."""
    lists = {"train": [1, 2], "dev": [3], "test": [4], "validated": [1, 2, 3, 4, 5]}
    return commonvoice(tmp_path_factory.mktemp("cvsplit") / "nl",
                       {f"cv_{i}.mp3": mp3_tone(1.0, 32000) for i in range(1, 6)},
                       {name: [cv_row(f"spk{c}", f"cv_{c}.mp3", f"zin {c}") for c in clips]
                        for name, clips in lists.items()})


def test_commonvoice_dev_and_test_clips_stay_dev_and_test_wherever_listed(cv_root):
    df = imp.import_commonvoice(cv_root, splits=["validated"])  # dev/test.tsv not asked for
    assert dict(zip(df["segment_id"], df["split"])) == {
        "cv_1": "train", "cv_2": "train", "cv_3": "dev", "cv_4": "test", "cv_5": "train"}
    assert set(df["cv_list"]) == {"validated"}
    df = imp.import_commonvoice(cv_root)  # train, dev, test
    assert dict(zip(df["segment_id"], df["cv_list"])) == {
        "cv_1": "train", "cv_2": "train", "cv_3": "dev", "cv_4": "test"}
    assert dict(zip(df["segment_id"], df["split"]))["cv_3"] == "dev"


# -- corpus shard ---------------------------------------------------------------------------


def test_cli_shard_writes_train_rows_only_unless_asked(ls_manifest, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["shard", str(ls_manifest), "-o", str(tmp_path / "train"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    got = shard_members(tmp_path / "train")
    assert set(got) == TRAIN, f"dev/test in training shards: {sorted(set(got) & (DEV | TEST))}"
    assert all(meta["split"] == "train" for _, meta in got.values())
    text = one_line(res.output)
    assert "left out 3 dev and 3 test utterances" in text and "--split" in text
    res = runner.invoke(app, ["shard", str(ls_manifest), "-o", str(tmp_path / "dev"),
                              "--split", "dev", "--no-progress"])
    assert res.exit_code == 0, res.output
    got = shard_members(tmp_path / "dev")
    assert set(got) == DEV and {m["split"] for _, m in got.values()} == {"dev"}
    res = runner.invoke(app, ["shard", str(ls_manifest), "-o", str(tmp_path / "all"),
                              "--split", "all", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert set(shard_members(tmp_path / "all")) == TRAIN | DEV | TEST
    res = runner.invoke(app, ["shard", str(ls_manifest), "-o", str(tmp_path / "x"),
                              "--split", "held"])
    assert res.exit_code != 0 and "train, dev, test, all" in one_line(res.output)


def test_cli_shard_refuses_a_manifest_without_train_rows(ls_root, tmp_path):
    dev = tmp_path / "dev.parquet"
    res = CliRunner().invoke(app, ["import", "librispeech", str(ls_root / "dev-clean"), "-o",
                                   str(dev), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["shard", str(dev), "-o", str(tmp_path / "s"), "--no-progress"])
    text = one_line(res.output)
    assert res.exit_code != 0 and "--split dev" in text and "Traceback" not in text
    assert not list((tmp_path / "s").glob("*.tar"))


def test_write_shards_split_argument(ls_manifest, tmp_path):
    from corpus_tools.shards import write_shards

    df = read_segments(ls_manifest)
    index = write_shards(df, tmp_path / "t", progress=False)  # library default: train
    assert index["count"].sum() == len(TRAIN)
    index = write_shards(df, tmp_path / "d", split="test", progress=False)
    assert set(shard_members(tmp_path / "d")) == TEST


# -- corpus simulate ------------------------------------------------------------------------


@pytest.mark.parametrize("cond", ["2spk-concat", "baseline"])
def test_cli_simulate_librispeech_root_keeps_dev_and_test_out(ls_root, cond, tmp_path):
    out = tmp_path / "sim"
    res = CliRunner().invoke(app, ["simulate", cond, "--source", str(ls_root), "-o", str(out),
                                   "--batch-seconds", "8"])
    assert res.exit_code == 0, res.output
    got = shard_members(out)
    assert not set(got) & (DEV | TEST), f"dev/test in training shards: {sorted(set(got) & (DEV | TEST))}"
    assert set(got) == TRAIN
    for _, meta in got.values():
        partner = meta["simulation"].get("partner_id")
        assert partner is None or partner in TRAIN
    text = one_line(res.output)
    assert "left out 3 dev and 3 test utterances" in text and "--split" in text


def test_cli_simulate_val_output_is_the_undegraded_dev_split(ls_root, ls_manifest, tmp_path):
    res = CliRunner().invoke(app, ["simulate", "2spk-concat", "--source", str(ls_manifest), "-o",
                                   str(tmp_path / "train"), "--val-output", str(tmp_path / "val"),
                                   "--batch-seconds", "8"])
    assert res.exit_code == 0, res.output
    assert set(shard_members(tmp_path / "train")) == TRAIN
    val = shard_members(tmp_path / "val")
    assert set(val) == DEV
    rows = {r["segment_id"]: r for r in read_segments(ls_manifest).to_dicts()}
    for sid, (audio, meta) in val.items():
        clean, _ = sf.read(rows[sid]["path"], dtype="float32")
        np.testing.assert_allclose(audio, clean, atol=1 / 32768)
        assert meta["split"] == "dev" and meta["transcript"] == rows[sid]["text"]
        assert meta.get("simulation", {}).get("modified", False) is False
    assert pl.read_parquet(tmp_path / "val" / "shards.parquet")["count"].sum() == len(DEV)


def test_simulate_split_dev_writes_dev_rows_undegraded(ls_manifest, tmp_path):
    from corpus_tools.simulate import simulate_offline

    summary = simulate_offline("2spk-concat", ls_manifest, tmp_path, batch_seconds=8.0,
                               split="dev")
    assert summary["modified"] == 0 and summary["utterances"] == len(DEV)
    assert set(shard_members(tmp_path)) == DEV


# -- the online Simulator on real importer output -----------------------------------------


def test_simulator_never_degrades_imported_dev_and_test(ls_manifest):
    from corpus_tools.data.batch import Utterance
    from corpus_tools.data.rng import batch_rng
    from corpus_tools.simulate import Simulator, source_items

    items = source_items(ls_manifest)
    utts = [Utterance(it.key, it.load(), dict(it.meta)) for it in items]
    sim = Simulator("2spk-concat", source=ls_manifest)
    assert {e["id"] for e in sim.pool.entries} == TRAIN
    out = sim(utts, batch_rng(0, 0))
    for u, v in zip(utts, out):
        rec = v.meta["simulation"]
        if u.key in DEV | TEST:
            assert rec["modified"] is False and np.array_equal(u.audio, v.audio), u.key
        else:
            assert rec["modified"] is True and rec["partner_id"] in TRAIN, u.key


def test_online_stream_over_imported_shards_leaves_dev_and_test_alone(ls_manifest, tmp_path):
    from corpus_tools.data.stream import ShardBatchStream
    from corpus_tools.shards import write_shards
    from corpus_tools.simulate import SpeechPool, Simulator

    write_shards(read_segments(ls_manifest), tmp_path, split="all", samples_per_shard=5,
                 progress=False)
    assert {e["id"] for e in SpeechPool.from_source(tmp_path).entries} == TRAIN
    sim = Simulator("2spk-concat", source=tmp_path, batch_seconds=8.0)
    seen = set()
    for batch in ShardBatchStream(tmp_path, 8.0, seed=1, infinite=False, transform=sim):
        for meta in batch.meta:
            seen.add(meta["id"])
            rec = meta["simulation"]
            if meta["id"] in DEV | TEST:
                assert rec["modified"] is False
            assert rec.get("partner_id") is None or rec["partner_id"] in TRAIN
    assert seen == TRAIN | DEV | TEST


# -- corpus holdout -------------------------------------------------------------------------


def holdout_manifest(tmp_path: Path) -> pl.DataFrame:
    """Sessions of 1, 2, 3 and 5 utterances (durations 1..n s, ids not in length order), a
    session given only by its recording, and a row that is already dev."""
    rows = []

    def add(sid, session, dur, split=None, recording=None):
        rows.append(dict(segment_id=sid, recording_id=recording or sid, path=str(tmp_path / "x.wav"),
                         start=0.0, end=dur, duration=dur, text="", speaker="s", method="m",
                         language="en", session=session, split=split))

    add("a-0", "A", 4.0)
    for i, d in enumerate([2.0, 1.0]):
        add(f"b-{i}", "B", d)
    for i, d in enumerate([3.0, 1.0, 2.0]):
        add(f"c-{i}", "C", d)
    for i, d in enumerate([5.0, 1.0, 4.0, 2.0, 3.0]):
        add(f"d-{i}", "D", d)
    add("d-dev", "D", 3.0, split="dev")
    for i, d in enumerate([1.0, 3.0, 2.0]):
        add(f"r-{i}", None, d, recording="rec-R")
    return pl.DataFrame(rows)


def test_holdout_median_marks_the_median_utterance_of_each_session(tmp_path):
    from corpus_tools.splits import mark_holdout

    df = holdout_manifest(tmp_path)
    out = mark_holdout(df, per_session=1, pick="median")
    dev = set(out.filter(pl.col("split") == "dev")["segment_id"])
    # B: lower median of [1, 2] -> the 1 s b-1; C: 2 s c-2; D: 3 s d-4; R (recording): 2 s r-2;
    # A has one utterance: it stays for training; d-dev stays dev
    assert dev == {"b-1", "c-2", "d-4", "r-2", "d-dev"}
    assert out.height == df.height and set(out.columns) == set(df.columns)
    assert out.filter(pl.col("segment_id") == "a-0")["split"][0] != "dev"
    two = set(mark_holdout(df, per_session=2, pick="median").filter(
        pl.col("split") == "dev")["segment_id"])
    assert two == {"b-1", "c-0", "c-2", "d-4", "d-2", "r-1", "r-2", "d-dev"}


def test_holdout_random_is_seeded_and_exact_per_session(tmp_path):
    from corpus_tools.splits import mark_holdout

    rows = [dict(segment_id=f"s{s}-{i}", recording_id=f"s{s}", path="x.wav", start=0.0,
                 end=1.0 + i, duration=1.0 + i, text="", speaker=None, method="m", language="en",
                 session=f"s{s}") for s in range(30) for i in range(1 + s % 6)]
    df = pl.DataFrame(rows)
    a = mark_holdout(df, per_session=2, pick="random", seed=4)
    b = mark_holdout(df.sample(fraction=1.0, shuffle=True, seed=1), per_session=2, pick="random",
                     seed=4)
    c = mark_holdout(df, per_session=2, pick="random", seed=5)
    dev = lambda x: set(x.filter(pl.col("split") == "dev")["segment_id"])  # noqa: E731
    assert dev(a) == dev(b) and dev(a) != dev(c)
    counts = a.filter(pl.col("split") == "dev").group_by("session").len()
    per = dict(zip(counts["session"], counts["len"]))
    for s in range(30):
        n = 1 + s % 6
        assert per.get(f"s{s}", 0) == min(2, n - 1), (s, n)


def test_cli_holdout(tmp_path):
    src = tmp_path / "in.parquet"
    holdout_manifest(tmp_path).drop("split").write_parquet(src)
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(app, ["holdout", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    df = read_segments(out)
    assert set(df.filter(pl.col("split") == "dev")["segment_id"]) == {"b-1", "c-2", "d-4", "r-2"}
    text = one_line(res.output)
    assert "4 utterances" in text and "1 session" in text
    again = tmp_path / "again.parquet"
    CliRunner().invoke(app, ["holdout", str(src), "-o", str(again)])
    assert again.read_bytes() == out.read_bytes()
    res = CliRunner().invoke(app, ["holdout", str(src), "-o", str(out), "--pick", "longest"])
    assert res.exit_code != 0 and "median" in one_line(res.output)
