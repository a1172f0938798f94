"""`corpus ingest` and the audio layer, on real decoding paths (ffprobe, ffmpeg, torchcodec)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from corpus_tools import ingest as ing
from corpus_tools.audio import AudioError, load_audio, probe, write_audio
from corpus_tools.cli import app
from corpus_tools.manifests import read_recordings
from corpus_tools.samples import add_bad_files, espeak

runner = CliRunner()


@pytest.fixture()
def mixed_folder(tmp_path, sample_archive) -> Path:
    d = tmp_path / "in put ÄÖ"  # spaces and non-ASCII in the path
    d.mkdir()
    shutil.copy(next(sample_archive.glob("bc000.*")), d)
    shutil.copy(next(sample_archive.glob("bc001.*")), d)
    expected = add_bad_files(d)
    return d, expected


@pytest.mark.slow
def test_ingest_bad_files_get_rows_and_never_crash(tmp_path, mixed_folder):
    folder, expected = mixed_folder
    res = runner.invoke(app, ["ingest", str(folder), "-o", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    df = read_recordings(tmp_path / "w" / "recordings.parquet")
    assert df.height == 2 + len(expected)
    by_name = {Path(p).name: (s, r) for p, s, r in df.select("path", "status", "reason").iter_rows()}
    for name, status in expected.items():
        assert by_name[name][0] == status, (name, by_name[name])
        assert by_name[name][1]
    assert "empty" in by_name["empty.wav"][1]
    assert "truncated" in by_name["truncated.mp3"][1]
    assert "no audio stream" in by_name["video_only.mp4"][1]
    ok = df.filter(pl.col("status") == "ok")
    assert ok.height == 2 and (ok["duration"] > 90).all() and (ok["sample_rate"] > 0).all()
    assert "failed" in res.output and "ok" in res.output


@pytest.mark.slow
def test_ingest_metadata_filters(tmp_path, sample_archive):
    folder = tmp_path / "arch"
    folder.mkdir()
    for f in sample_archive.glob("bc00*"):
        shutil.copy(f, folder)
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "id,title,summary,genre,date\n"
        "bc000,Nieuwsuur,Achtergronden,actualiteiten,2020-01-01\n"
        "bc001,NOS Journaal,Het nieuws,nightly news,2020-01-01\n"
        "bc002,Nieuwsuur,Achtergronden,actualiteiten,2020-01-01\n")
    res = runner.invoke(app, ["ingest", str(folder), "-o", str(tmp_path / "w"), "--metadata", str(meta)])
    assert res.exit_code == 0, res.output
    df = read_recordings(tmp_path / "w" / "recordings.parquet").sort("recording_id")
    st = dict(zip(df["recording_id"], df["status"]))
    assert st == {"bc000": "ok", "bc001": "filtered", "bc002": "filtered"}
    reasons = dict(zip(df["recording_id"], df["reason"]))
    assert "genre" in reasons["bc001"] and "duplicate of bc000" in reasons["bc002"]
    assert df.filter(pl.col("recording_id") == "bc000")["title"][0] == "Nieuwsuur"


def test_duration_filter_and_allow_mode():
    df = pl.DataFrame({"recording_id": ["a", "b", "c"], "status": ["ok", "ok", "failed"],
                       "reason": [None, None, "x"], "duration": [4 * 3600.0, 100.0, None],
                       "genre": ["quiz", "sport", None], "title": ["A", "B", None],
                       "date": ["1", "2", None], "summary": ["s", "s", None]})
    out = ing.apply_filters(df, ing.GenreFilter("allow", drop=[], keep=["quiz"]))
    assert out["status"].to_list() == ["filtered", "filtered", "failed"]
    assert "longer than 3 h" in out["reason"][0] and "keep list" in out["reason"][1]
    gf = ing.GenreFilter("deny", drop=["sports", "nightly news"])
    assert gf.reason("Sports") and gf.reason("nightly news late edition") and not gf.reason("quiz")


def _broadcasts(dates, titles=None, summaries=None):
    n = len(dates)
    return pl.DataFrame({"recording_id": [f"r{i}" for i in range(n)], "status": ["ok"] * n, "reason": [None] * n,
                         "duration": [1800.0] * n, "title": titles or ["Nieuwsuur"] * n,
                         "summary": summaries or ["Achtergronden"] * n, "date": dates},
                        schema_overrides={"date": pl.String})


@pytest.mark.parametrize("dates", [[None, None], ["", ""], ["  ", None], [None, None, None]])
def test_unknown_dates_are_never_the_same_date(dates):
    """Same title and summary but no publication date: nothing says they are one broadcast."""
    out = ing.apply_filters(_broadcasts(dates), None)
    assert out["status"].to_list() == ["ok"] * len(dates), out["reason"].to_list()


def test_known_equal_dates_still_deduplicate():
    out = ing.apply_filters(_broadcasts(["2020-01-01", None, "2020-01-01", "2020-01-02"]), None)
    st = dict(zip(out["recording_id"], out["status"]))
    assert st == {"r0": "ok", "r1": "ok", "r2": "filtered", "r3": "ok"}
    assert "duplicate of r0" in out.filter(pl.col("recording_id") == "r2")["reason"][0]


def test_truncation_seen_against_metadata_duration():
    df = pl.DataFrame({"recording_id": ["a", "b"], "status": ["ok", "ok"], "reason": [None, None],
                       "duration": [900.0, 1795.0], "meta_duration": [1800.0, 1800.0]})
    out = ing.apply_filters(df, None)
    assert out["status"].to_list() == ["failed", "ok"] and "metadata says 1800" in out["reason"][0]


@pytest.mark.slow
def test_ingest_resume_uses_journal(tmp_path, sample_archive, monkeypatch):
    folder = tmp_path / "a"
    folder.mkdir()
    shutil.copy(next(sample_archive.glob("bc000.*")), folder)
    assert runner.invoke(app, ["ingest", str(folder), "-o", str(tmp_path / "w")]).exit_code == 0
    calls = []
    monkeypatch.setattr(ing, "probe_file", lambda *a, **k: calls.append(a) or {})
    assert runner.invoke(app, ["ingest", str(folder), "-o", str(tmp_path / "w")]).exit_code == 0
    assert calls == []  # every file came from the journal


def test_ingest_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "-o", str(tmp_path / "w")])
    assert res.exit_code != 0 and "no such file" in res.output
    (tmp_path / "m.csv").write_text("title\nx\n")
    (tmp_path / "x.wav").write_bytes(b"")
    res = runner.invoke(app, ["ingest", str(tmp_path / "x.wav"), "-o", str(tmp_path / "w"),
                              "--metadata", str(tmp_path / "m.csv")])
    assert res.exit_code != 0 and "'id' column" in res.output


@pytest.mark.slow
def test_decode_any_container_by_range(sample_archive):
    """wav, mp3 and AAC-in-mp4 decode to 16 kHz mono, and a range equals the slice of a full decode."""
    for f in sorted(sample_archive.glob("bc00*")):
        info = probe(f)
        full = load_audio(f)
        assert full.dtype == np.float32 and full.ndim == 1
        assert abs(len(full) / 16000 - info.duration) < 0.15  # mp3 headers count encoder padding
        part = load_audio(f, 10.0, 12.5)
        assert len(part) == 40000
        ref = full[160000:200000]
        # exact alignment: the range decode must not be shifted against the full decode
        assert np.corrcoef(part[2000:-2000], ref[2000:-2000])[0, 1] > 0.99, f.name


def test_decode_other_rates_and_channels(tmp_path):
    import soundfile as sf

    x = espeak("Hallo allemaal", "nl")
    stereo8k = np.stack([x, x], 1)[::2]
    sf.write(tmp_path / "a.flac", stereo8k, 8000)
    sf.write(tmp_path / "b.wav", np.tile(x[:, None], (1, 6)), 16000, subtype="PCM_24")
    a = load_audio(tmp_path / "a.flac")
    b = load_audio(tmp_path / "b.wav", 0.5, 1.0)
    assert abs(len(a) - len(x)) < 40 and len(b) == 8000
    assert probe(tmp_path / "b.wav").channels == 6
    with pytest.raises(AudioError):
        probe(tmp_path / "missing.wav")
    write_audio(tmp_path / "c.flac", a)
    assert sf.info(tmp_path / "c.flac").samplerate == 16000


def test_cli_help_lists_commands():
    from trainer.cli import app as tapp

    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("ingest", "segment", "stats", "shard"):
        assert cmd in res.output
    assert runner.invoke(tapp, ["--help"]).exit_code == 0


def test_command_help_reflows_paragraphs_but_keeps_examples_and_lists():
    from corpus_tools.clihelp import reflow

    doc = """Summary line.

    First paragraph, wrapped
    by hand at some width.

      corpus ingest ARCHIVE -o work/
    - a list item
    - another one
    """
    assert reflow(doc).split("\n") == ["Summary line.", "", "First paragraph, wrapped by hand at some width.", "",
                                       "  corpus ingest ARCHIVE -o work/", "- a list item", "- another one"]
    # every registered command gets it: no hand-wrapped line survives in segment's help
    info = next(i for i in app.registered_commands if i.name == "segment")
    assert "all w-* methods come from one Whisper pass" in info.help
