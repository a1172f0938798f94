"""Importers: tiny corpora in each standard layout → segments manifests → shards."""

from __future__ import annotations

import json
import tarfile
from functools import partial
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import corpora
from corpora import tone
from corpus_tools import importers as imp
from corpus_tools.cli import app
from corpus_tools.manifests import SEGMENTS_SCHEMA, read_segments


def check_manifest(df: pl.DataFrame, n: int, method: str) -> None:
    assert list(df.columns[: len(SEGMENTS_SCHEMA)]) == list(SEGMENTS_SCHEMA)
    assert df.height == n
    assert df["segment_id"].n_unique() == n
    assert (df["method"] == method).all()
    assert (df["start"] == 0).all()
    assert (df["end"] - df["duration"]).abs().max() < 1e-9
    assert df["duration"].min() > 0
    assert all(Path(p).is_file() for p in df["path"])


# -- LibriSpeech ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory) -> Path:
    return corpora.librispeech(tmp_path_factory.mktemp("ls") / "LibriSpeech", {"dev-clean": {
        ("19", "198"): ["HELLO WORLD", "SECOND ONE"], ("26", "495"): ["THIRD UTTERANCE"]}},
        speakers=corpora.LS_SPEAKERS_TXT)


def test_librispeech(librispeech):
    df = imp.import_librispeech(librispeech / "dev-clean")
    check_manifest(df, 3, "librispeech")
    row = df.filter(pl.col("segment_id") == "19-198-0001").row(0, named=True)
    assert row["text"] == "SECOND ONE"
    assert row["speaker"] == "19" and row["session"] == "198" and row["chapter"] == "198"
    assert row["language"] == "en" and row["subset"] == "dev-clean" and row["gender"] == "F"
    assert row["duration"] == pytest.approx(1.5)
    # the root works too
    assert imp.import_librispeech(librispeech).height == 3


# -- MLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mls(tmp_path_factory) -> Path:
    flac = partial(tone, seconds=1.25)
    opus = partial(tone, seconds=2.0, sr=48000, fmt="OGG", subtype="OPUS")
    return corpora.mls(tmp_path_factory.mktemp("mls") / "mls_dutch", {
        "train": [(spk, book, i, f"dit is zin {i}", flac)
                  for spk, book, i in [("10087", "10388", 0), ("10087", "10388", 1), ("1234", "555", 7)]],
        "dev": [("999", "111", 3, "dit is zin 3", opus, "opus")],
    }, metainfo="SPEAKER   |   GENDER   | PARTITION  |  MINUTES   |  BOOK ID   | TITLE | CHAPTER\n"
                "10087     |    F       |   train    |  10.0      |  10388     | Boek  | 1\n")


def test_mls_flac_and_opus(mls):
    df = imp.import_mls(mls)
    check_manifest(df, 4, "mls")
    assert set(df["language"]) == {"nl"}
    row = df.filter(pl.col("segment_id") == "10087_10388_000001").row(0, named=True)
    assert row["speaker"] == "10087" and row["session"] == "10087_10388"
    assert row["text"] == "dit is zin 1" and row["split"] == "train" and row["gender"] == "F"
    opus = df.filter(pl.col("split") == "dev").row(0, named=True)
    assert opus["path"].endswith(".opus") and opus["duration"] == pytest.approx(2.0, abs=0.05)
    assert imp.import_mls(mls, splits=["dev"]).height == 1
    assert imp.import_mls(mls / "train").height == 3


# -- Common Voice ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def commonvoice(tmp_path_factory) -> Path:
    clips = {"common_voice_nl_1.mp3": 1.0, "common_voice_nl_2.mp3": 1.5,
             "common_voice_nl_3.mp3": 2.0}

    def row(client, clip, sentence):
        return corpora.cv_row(client, clip, sentence, age="thirties", gender="female_feminine")

    root = corpora.commonvoice(
        tmp_path_factory.mktemp("cv") / "cv-corpus-18.0-2024-06-14" / "nl",
        {name: corpora.mp3_tone(secs, 32000) for name, secs in clips.items()},
        {"train": [row("spkA", "common_voice_nl_1.mp3", 'Hij zei "hallo" tegen mij.'),
                   row("spkB", "common_voice_nl_2.mp3", "Tweede zin.")],
         "dev": [row("spkC", "common_voice_nl_3.mp3", "Derde.")],
         "test": [],
         "validated": [row("spkA", "common_voice_nl_1.mp3", 'Hij zei "hallo" tegen mij.')]})
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\ncommon_voice_nl_2.mp3\t1500\n")
    return root


def test_commonvoice(commonvoice):
    df = imp.import_commonvoice(commonvoice)
    check_manifest(df, 3, "commonvoice")
    row = df.filter(pl.col("segment_id") == "common_voice_nl_1").row(0, named=True)
    assert row["text"] == 'Hij zei "hallo" tegen mij.'
    assert row["speaker"] == "spkA" and row["language"] == "nl" and row["split"] == "train"
    assert row["cv_list"] == "train"
    assert row["gender"] == "female_feminine"
    assert row["duration"] == pytest.approx(1.0, abs=0.1)  # probed (mp3 padding aside)
    assert df.filter(pl.col("segment_id") == "common_voice_nl_2")["duration"][0] == 1.5
    # validated overlaps train: kept once
    both = imp.import_commonvoice(commonvoice, splits=["validated", "train", "dev"])
    assert both.height == 3
    clip1 = both.filter(pl.col("segment_id") == "common_voice_nl_1").row(0, named=True)
    assert clip1["cv_list"] == "validated" and clip1["split"] == "train"


# -- MUSAN ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def musan(tmp_path_factory) -> Path:
    return corpora.musan(tmp_path_factory.mktemp("musan") / "musan", {
        ("noise", "free-sound"): {f"noise-free-sound-{i:04d}": partial(tone, seconds=0.5 + i, freq=900)
                                  for i in range(3)},
        ("noise", "sound-bible"): {"noise-sound-bible-0000": partial(tone, seconds=1.0, sr=44100)},
        ("music", "fma"): {"music-fma-0000": partial(tone, seconds=1.0)},
    }, files={("noise", "free-sound"): {"ANNOTATIONS": "noise-free-sound-0001\n", "LICENSE": "CC BY 3.0\n"},
              ("noise", "sound-bible"): {"LICENSE": "public domain\n", "ANNOTATIONS": ""},
              ("music", "fma"): {"ANNOTATIONS": "music-fma-0000 classical N\n"}})


def test_musan(musan, tmp_path):
    df = imp.import_musan(musan)
    check_manifest(df, 4, "musan")
    assert set(df["source"]) == {"free-sound", "sound-bible"}
    assert set(df["subset"]) == {"noise"}
    assert df.filter(pl.col("background"))["segment_id"].to_list() == ["noise-free-sound-0001"]
    assert df["category"].null_count() == 4
    cats = tmp_path / "cats.csv"
    cats.write_text("id,category\nnoise-free-sound-0000,technical\nnoise-free-sound-0001,ambient\n"
                    "noise-sound-bible-0000.wav,crowd\n")
    df = imp.import_musan(musan, categories=cats)
    got = dict(zip(df["segment_id"], df["category"]))
    assert got["noise-free-sound-0000"] == "technical" and got["noise-sound-bible-0000"] == "crowd"
    both = imp.import_musan(musan, subsets=["noise", "music"])
    music = both.filter(pl.col("subset") == "music").row(0, named=True)
    assert music["annotation"] == "classical N"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,category\nnoise-free-sound-0000,loud\n")
    with pytest.raises(ValueError, match="technical"):
        imp.import_musan(musan, categories=bad)


# -- FMA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fma(tmp_path_factory) -> Path:
    return corpora.fma(tmp_path_factory.mktemp("fma"), {tid: corpora.mp3_tone(1.0, 44100) for tid in (2, 5, 1039)},
                       ['2,AWOL,AWOL,training,small,Hip-Hop,[21],[21],Food',
                        '5,AWOL,AWOL,training,large,Hip-Hop,"[21, 811]","[21, 811]",This World'],
                       ["21,8389,0,Hip-Hop,21", "811,1000,21,Hip-Hop Beats,21"])


def test_fma(fma):
    df = imp.import_fma(fma)
    check_manifest(df, 3, "fma")
    row = df.filter(pl.col("segment_id") == "fma-000005").row(0, named=True)
    assert row["genre_top"] == "Hip-Hop" and row["genres"] == "Hip-Hop|Hip-Hop Beats"
    assert row["fma_subset"] == "large" and row["artist"] == "AWOL" and row["title"] == "This World"
    unknown = df.filter(pl.col("segment_id") == "fma-001039").row(0, named=True)
    assert unknown["genre_top"] is None
    assert imp.import_fma(fma / "fma_large", metadata=fma / "fma_metadata").height == 3


def test_read_fma_tracks_header(fma):
    tracks = imp.read_fma_tracks(fma / "fma_metadata" / "tracks.csv")
    assert tracks[5]["track.genre_top"] == "Hip-Hop"
    assert tracks[2]["set.subset"] == "small"


# -- layouts that are wrong -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(imp.IMPORTERS))
def test_wrong_layout_is_a_clear_error(name, tmp_path):
    (tmp_path / "random.txt").write_text("nothing here")
    with pytest.raises(imp.CorpusLayoutError):
        imp.IMPORTERS[name](tmp_path)


# -- CLI and the way on to shards -----------------------------------------------------------


def test_cli_import_then_shard(librispeech, commonvoice, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ls.parquet"
    res = runner.invoke(app, ["import", "librispeech", str(librispeech), "-o", str(out),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert read_segments(out).height == 3
    # dev-clean rows are not training data: sharded only when asked for
    res = runner.invoke(app, ["shard", str(out), "-o", str(tmp_path / "shards"), "--no-progress"])
    assert res.exit_code != 0 and "--split dev" in res.output
    res = runner.invoke(app, ["shard", str(out), "-o", str(tmp_path / "shards"), "--split", "dev",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    tar = next((tmp_path / "shards").glob("*.tar"))
    with tarfile.open(tar) as tf:
        metas = [json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith(".json")]
    assert {m["transcript"] for m in metas} == {"HELLO WORLD", "SECOND ONE", "THIRD UTTERANCE"}
    assert {m["session"] for m in metas} == {"198", "495"}
    assert {m["method"] for m in metas} == {"librispeech"}
    # mp3 clips (FFmpeg decode path) shard too
    cv = tmp_path / "cv.parquet"
    res = runner.invoke(app, ["import", "commonvoice", str(commonvoice), "-o", str(cv),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["shard", str(cv), "-o", str(tmp_path / "cvshards"), "--format",
                              "flac", "--no-progress"])
    assert res.exit_code == 0, res.output
    index = pl.read_parquet(tmp_path / "cvshards" / "shards.parquet")
    train = read_segments(cv).filter(pl.col("split") == "train")  # the dev.tsv clip stays out
    assert index["count"].sum() == train.height == 2
    assert index["hours"].sum() == pytest.approx(train["duration"].sum() / 3600)
    # a bad directory: one-line error, non-zero exit
    res = runner.invoke(app, ["import", "mls", str(tmp_path / "nope"), "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_cli_import_writes_into_a_folder_like_the_other_commands(librispeech, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["import", "librispeech", str(librispeech), "-o", str(tmp_path / "manifests"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert read_segments(tmp_path / "manifests" / "librispeech.parquet").height == 3
    res = runner.invoke(app, ["import", "librispeech", str(librispeech), "-o", str(tmp_path / "ls.csv")])
    assert res.exit_code != 0 and ".parquet" in res.output and not (tmp_path / "ls.csv").exists()
