"""The stage entry points `run_ingest` and `run_segment`, called from Python, write the very
bytes `corpus ingest` and `corpus segment` write, and return what the commands print."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corpora
from corpus_tools.audio import load_audio, write_audio
from corpus_tools.cli import app
from corpus_tools.ingest import IngestArgs, run_ingest
from corpus_tools.samples import pyannote_sample_dir
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.run import SegmentArgs, run_segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

cli = CliRunner()


def ok(args: list):
    res = cli.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def tree(d: Path) -> dict[str, str]:
    """Relative path → sha256 of every non-hidden file under ``d`` (the ingest journal aside)."""
    return corpora.file_tree(d, skip=("ingest",))


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory) -> Path:
    """Two recordings of real speech, 12 s and 31 s (seq cuts one 30 s piece and a tail)."""
    out = tmp_path_factory.mktemp("entry") / "arch"
    out.mkdir()
    call = pyannote_sample_dir() / "sample.wav"
    write_audio(out / "een.wav", load_audio(call, 0.0, 12.0))
    write_audio(out / "twee.wav", load_audio(call, 0.0, 31.0))
    return out


def test_run_ingest_and_run_segment_write_what_the_cli_writes(tiny_archive, tmp_path):
    cli_work, lib_work = tmp_path / "cli", tmp_path / "lib"
    ok(["ingest", tiny_archive, "-o", cli_work])
    ok(["segment", cli_work, "--method", "seq"])

    ingested = run_ingest(IngestArgs(sources=[tiny_archive], out=lib_work))
    assert ingested.files == 2 and ingested.path == lib_work / "recordings.parquet"
    assert sorted(ingested.recordings["status"].to_list()) == ["ok", "ok"]
    segmented = run_segment(SegmentArgs(workdir=lib_work, methods=["seq"]))
    assert [(o.method, o.segments) for o in segmented.outputs] == [("seq", 1)]
    assert segmented.recordings == 2 and segmented.model_seconds == 0.0 and segmented.failed == []
    assert tree(lib_work) == tree(cli_work)


@pytest.mark.slow
def test_run_segment_fills_the_caches_and_reports_failures_like_the_cli(tiny_archive, models_dir, tmp_path):
    arch = tmp_path / "arch"
    shutil.copytree(tiny_archive, arch)
    cli_work, lib_work = tmp_path / "cli", tmp_path / "lib"
    ok(["ingest", arch, "-o", cli_work])
    run_ingest(IngestArgs(sources=[arch], out=lib_work))
    (arch / "twee.wav").write_text("replaced after ingest\n")

    res = ok(["segment", cli_work, "--method", "sad", "--models-dir", models_dir, "--device", "cpu"])
    assert "failed twee" in res.output
    config = SegmentConfig(models_dir=str(models_dir), device="cpu")
    segmented = run_segment(SegmentArgs(workdir=lib_work, methods=["sad"], config=config))
    assert [f.split(":")[0] for f in segmented.failed] == ["twee"]
    assert segmented.model_seconds > 0 and segmented.outputs[0].segments > 0
    assert tree(lib_work) == tree(cli_work)
