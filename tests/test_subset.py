"""`corpus subset`: a label subset by duration, from a manifest to a manifest and from shards to shards."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from corpora import sample_pieces, sample_wav
from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.cli import app
from corpus_tools.data.tar_index import list_shards, read_shard_records
from corpus_tools.shards import write_shards

cli = CliRunner()
LONGEST = 6.0  # seconds: the longest piece of sample_pieces


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """24 pieces (2–6 s) of a real recording: a segments manifest and the shards written from it."""
    root = tmp_path_factory.mktemp("subset")
    rows = pl.DataFrame([dict(r, text="hallo") for r in sample_pieces(sample_wav(), 0.0, 24, "sb")])
    manifest = root / "segments.parquet"
    rows.write_parquet(manifest)
    write_shards(rows, root / "shards", samples_per_shard=10, progress=False)
    return {"manifest": manifest, "shards": root / "shards", "segments": rows.height}


def _subset(src: Path, out: Path, hours: float, seed: int) -> str:
    res = cli.invoke(app, ["subset", str(src), "--hours", str(hours), "--seed", str(seed), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return res.output


def _shard_seconds(folder: Path) -> dict[str, float]:
    return {r.key: r.num_frames / SAMPLE_RATE for p in list_shards(str(folder)) for r in read_shard_records(p)}


def test_manifest_subset_holds_the_hours_and_repeats_by_seed(corpus, tmp_path):
    hours = 20 / 3600
    said = _subset(corpus["manifest"], tmp_path / "a.parquet", hours, seed=3)
    a = pl.read_parquet(tmp_path / "a.parquet")
    assert hours * 3600 <= a["duration"].sum() < hours * 3600 + LONGEST
    assert f"of {corpus['segments']} segments" in said
    _subset(corpus["manifest"], tmp_path / "b.parquet", hours, seed=3)
    assert pl.read_parquet(tmp_path / "b.parquet").equals(a), "same seed, same subset"
    _subset(corpus["manifest"], tmp_path / "c.csv", hours, seed=4)
    assert set(pl.read_csv(tmp_path / "c.csv")["segment_id"]) != set(a["segment_id"]), "another seed, another subset"
    _subset(corpus["manifest"], tmp_path / "d.parquet", 2 * hours, seed=3)
    assert set(a["segment_id"]) <= set(pl.read_parquet(tmp_path / "d.parquet")["segment_id"]), "nested budgets"


def test_shard_subset_copies_the_chosen_utterances(corpus, tmp_path):
    hours = 20 / 3600
    said = _subset(corpus["shards"], tmp_path / "a", hours, seed=3)
    a = _shard_seconds(tmp_path / "a")
    assert hours * 3600 <= sum(a.values()) < hours * 3600 + LONGEST and "utterances" in said
    assert json.loads((tmp_path / "a" / "subset.json").read_text())["utterances"] == len(a)
    _subset(corpus["shards"], tmp_path / "b", hours, seed=3)
    assert sorted(p.read_bytes() for p in (tmp_path / "a").glob("*.tar")) == \
        sorted(p.read_bytes() for p in (tmp_path / "b").glob("*.tar")), "same seed, same bytes"
    _subset(corpus["shards"], tmp_path / "c", hours, seed=4)
    assert set(_shard_seconds(tmp_path / "c")) != set(a)


def test_bad_input_is_a_one_line_error(corpus, tmp_path):
    res = cli.invoke(app, ["subset", str(tmp_path), "--hours", "1", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no *.tar shards" in res.output
    res = cli.invoke(app, ["subset", str(corpus["manifest"]), "--hours", "0", "-o", str(tmp_path / "o.parquet")])
    assert res.exit_code == 2 and "must be positive" in res.output
