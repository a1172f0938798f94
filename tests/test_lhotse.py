"""Lhotse in and out with the lhotse package itself: `corpus export lhotse`, `corpus import lhotse`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from corpus_tools.cli import app
from corpus_tools.manifests import read_recordings, read_segments

cli = CliRunner()
TEXTS = ["Goedenavond, dit is het NOS Journaal.", "Zo'n 12 auto's", "", "De BBC meldt: 3,5 graden"]


def ok(args) -> str:
    res = cli.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def work(sample_archive, tmp_path_factory) -> Path:
    """The sample archive (wav, mp3, AAC-in-mp4) ingested, with a hand-made segmentation:
    six segments per recording, the last one ending at the recording's end."""
    work = tmp_path_factory.mktemp("lh") / "work"
    ok(["ingest", sample_archive, "-o", work])
    rows = []
    for r in read_recordings(work / "recordings.parquet").filter(pl.col("status") == "ok").iter_rows(named=True):
        starts = [1.0 + 7.3 * k for k in range(5)] + [r["duration"] - 2.0]
        for k, start in enumerate(starts):
            d = 2.0 if k == 5 else 1.0 + 0.37 * k
            rows.append({"segment_id": f"{r['recording_id']}_{k:02d}", "recording_id": r["recording_id"],
                         "path": r["path"], "start": start, "end": start + d, "duration": d,
                         "text": TEXTS[k % len(TEXTS)], "speaker": f"{r['recording_id']}_S{k % 2}",
                         "method": "unit", "language": "nl", "session": r["recording_id"],
                         "split": "dev" if k == 3 else None, "gender": "f" if k % 2 else None})
    (work / "segments").mkdir()
    pl.DataFrame(rows).write_parquet(work / "segments" / "unit.parquet")
    return work


@pytest.fixture(scope="module")
def exported(work, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lh") / "lhotse"
    ok(["export", "lhotse", work, "--method", "unit", "-o", out])
    return out


@pytest.mark.slow
def test_export_loads_with_lhotse_and_keeps_hours_paths_and_durations(work, exported):
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

    segs = read_segments(work / "segments" / "unit.parquet")
    recs = {r["recording_id"]: r for r in read_recordings(work / "recordings.parquet").iter_rows(named=True)}
    rs = load_manifest(exported / "recordings.jsonl.gz")
    ss = load_manifest(exported / "supervisions.jsonl.gz")
    cuts = load_manifest(exported / "cuts.jsonl.gz")
    assert isinstance(rs, RecordingSet) and isinstance(ss, SupervisionSet) and isinstance(cuts, CutSet)
    assert {Path(recs[r.id]["path"]).suffix for r in rs} == {".wav", ".mp3", ".mp4"}
    for r in rs:  # the real source file and the ingest probe's numbers
        assert r.sources[0].source == recs[r.id]["path"]
        assert r.sampling_rate == recs[r.id]["sample_rate"] and r.num_channels == recs[r.id]["channels"]
        assert abs(r.duration - recs[r.id]["duration"]) <= 1 / r.sampling_rate
    hours = float(segs["duration"].sum()) / 3600
    assert math.isclose(sum(s.duration for s in ss) / 3600, hours, abs_tol=1e-12)
    assert math.isclose(sum(c.duration for c in cuts) / 3600, hours, abs_tol=len(cuts) / 16000 / 3600)
    by_id = {r["segment_id"]: r for r in segs.iter_rows(named=True)}
    assert {c.id for c in cuts} == set(by_id)
    for s in ss:
        row = by_id[s.id]
        assert (s.recording_id, s.text, s.speaker, s.language, s.gender) == \
               (row["recording_id"], row["text"], row["speaker"], "nl", row["gender"])
        assert s.custom["method"] == "unit" and s.custom["session"] == row["recording_id"]
        assert s.custom.get("split") == row["split"]


@pytest.mark.slow
def test_samplers_and_audio_of_every_format(exported):
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

    cuts = CutSet.from_file(exported / "cuts.jsonl.gz")  # lazy, as samplers like it
    n = len(cuts.to_eager())
    seen = sum(len(b) for b in SimpleCutSampler(cuts, max_duration=8.0, shuffle=True, seed=0))
    assert seen == n
    batches = list(DynamicBucketingSampler(cuts, max_duration=8.0, num_buckets=2, shuffle=True, seed=0))
    assert sum(len(b) for b in batches) == n and all(sum(c.duration for c in b) <= 8.0 for b in batches)
    formats = {}
    for c in cuts:
        suffix = Path(c.recording.sources[0].source).suffix
        if suffix in formats and formats[suffix] >= 2:
            continue
        audio = c.load_audio()
        assert audio.shape == (c.num_channels, c.num_samples), (c.id, suffix)
        assert np.abs(audio).max() > 0  # real audio, not padding
        formats[suffix] = formats.get(suffix, 0) + 1
    assert set(formats) == {".wav", ".mp3", ".mp4"}


@pytest.mark.slow
def test_export_is_deterministic(work, exported, tmp_path):
    ok(["export", "lhotse", work / "segments" / "unit.parquet", "-o", tmp_path / "again"])
    for name in ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz"):
        assert (tmp_path / "again" / name).read_bytes() == (exported / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("what", ["folder", "cuts"])
def test_round_trip(work, exported, what, tmp_path):
    src = exported if what == "folder" else exported / "cuts.jsonl.gz"
    ok(["import", "lhotse", src, "-o", tmp_path])  # a folder: gets lhotse.parquet
    back = read_segments(tmp_path / "lhotse.parquet")
    segs = read_segments(work / "segments" / "unit.parquet")
    assert back["segment_id"].to_list() == segs.sort("segment_id")["segment_id"].to_list()
    tol = 1 / 16000 if what == "folder" else 1 / 44100 + 1e-9  # cuts sit on the sample grid
    assert abs(float(back["duration"].sum()) - float(segs["duration"].sum())) <= tol * segs.height
    orig = {r["segment_id"]: r for r in segs.iter_rows(named=True)}
    for r in back.iter_rows(named=True):
        o = orig[r["segment_id"]]
        for k in ("recording_id", "path", "text", "speaker", "language", "method", "session", "split", "gender"):
            assert r[k] == o[k], (k, r[k], o[k])
        assert abs(r["start"] - o["start"]) <= tol and abs(r["end"] - o["end"]) <= 2 * tol


def librispeech_recipe(root: Path) -> Path:
    """What Lhotse's librispeech recipe writes: Recording.from_file of each flac, one
    supervision per utterance, language "English", text in upper case."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs, sups = [], []
    for k, (utt, text) in enumerate([("103-1240-0000", "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED"),
                                     ("103-1240-0001", "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS"),
                                     ("1034-121119-0000", "O'ER THE HILLS 2 MILES")]):
        t = np.arange(16000 + 4000 * k) / 16000
        path = root / "audio" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=utt)
        recs.append(rec)
        sups.append(SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0,
                                       text=text, language="English", speaker=utt.split("-")[0]))
    out = root / "manifests"
    out.mkdir()
    RecordingSet.from_recordings(recs).to_file(out / "librispeech_recordings_dev-clean.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(out / "librispeech_supervisions_dev-clean.jsonl.gz")
    return out


def test_import_a_recipe_then_shard(tmp_path):
    import json
    import tarfile

    manifests = librispeech_recipe(tmp_path)
    ok(["import", "lhotse", manifests, "-o", tmp_path / "ls.parquet"])
    df = read_segments(tmp_path / "ls.parquet")
    rows = {r["segment_id"]: r for r in df.iter_rows(named=True)}
    assert set(rows) == {"103-1240-0000", "103-1240-0001", "1034-121119-0000"}
    r = rows["103-1240-0001"]
    assert (r["language"], r["speaker"], r["session"], r["split"], r["subset"], r["method"]) == \
           ("en", "103", "103-1240", "dev", "dev-clean", "lhotse")
    assert r["text"] == "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS"  # the original, kept
    ok(["shard", tmp_path / "ls.parquet", "-o", tmp_path / "shards", "--split", "dev", "--no-progress"])
    metas = []
    for p in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(p) as tf:
            metas += [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    by_id = {m["id"]: m for m in metas}
    assert by_id["1034-121119-0000"]["transcript"] == "O'ER THE HILLS 2 MILES"
    assert by_id["1034-121119-0000"]["transcription"] == "o'er the hills two miles"


def test_import_overlapping_cuts_counts_each_supervision_once(tmp_path):
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse import Recording

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16000 * 4, dtype=np.float32) + 0.1, 16000)
    rec = Recording.from_file(path, recording_id="a")
    sups = [SupervisionSegment(id="s1", recording_id="a", start=0.5, duration=1.5, text="One", language="Dutch"),
            SupervisionSegment(id="s2", recording_id="a", start=1.5, duration=1.0, text="Two", language="nl")]
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([rec]),
                                 supervisions=SupervisionSet.from_segments(sups)).trim_to_supervisions()
    assert sum(len(c.supervisions) for c in cuts) == 4  # each cut also holds its neighbour
    cuts.to_file(tmp_path / "my_cuts.jsonl.gz")
    ok(["import", "lhotse", tmp_path / "my_cuts.jsonl.gz", "-o", tmp_path / "out.parquet"])
    df = read_segments(tmp_path / "out.parquet").sort("segment_id")
    assert df["segment_id"].to_list() == ["s1", "s2"] and df["language"].to_list() == ["nl", "nl"]
    assert df["start"].to_list() == pytest.approx([0.5, 1.5], abs=1 / 16000)
    assert df["session"].to_list() == ["a", "a"] and df["path"].to_list() == [str(path)] * 2


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    for args in (["import", "lhotse", tmp_path / "empty", "-o", tmp_path / "x.parquet"],
                 ["import", "lhotse", tmp_path / "nope.jsonl.gz", "-o", tmp_path / "x.parquet"],
                 ["export", "lhotse", tmp_path / "nope.parquet", "-o", tmp_path / "lh"]):
        res = cli.invoke(app, [str(a) for a in args])
        assert res.exit_code != 0 and "Traceback" not in res.output and "error" in res.output, res.output


def test_a_segment_past_the_end_of_its_recording(tmp_path):
    """The container's duration can be a little shorter than what decodes: a small overrun ends
    at the recording's end (Lhotse's trim refuses supervisions past it); a large one is an error."""
    from lhotse import load_manifest

    path = tmp_path / "a.wav"
    sf.write(path, np.full(16000 * 3, 0.1, dtype=np.float32), 16000)
    row = {"segment_id": "a1", "recording_id": "a", "path": str(path), "start": 2.0, "end": 3.2,
           "duration": 1.2, "text": "x", "speaker": None, "method": "unit", "language": "nl", "session": "a"}
    pl.DataFrame([row]).write_parquet(tmp_path / "segs.parquet")
    out = ok(["export", "lhotse", tmp_path / "segs.parquet", "-o", tmp_path / "lh"])
    assert "1 segment(s) ran up to 0.5 s past the end" in out
    cut = load_manifest(tmp_path / "lh" / "cuts.jsonl.gz")[0]
    assert cut.duration == pytest.approx(1.0) and cut.load_audio().shape == (1, 16000)
    pl.DataFrame([{**row, "end": 5.0, "duration": 3.0}]).write_parquet(tmp_path / "far.parquet")
    res = cli.invoke(app, ["export", "lhotse", str(tmp_path / "far.parquet"), "-o", str(tmp_path / "lh2")])
    assert res.exit_code != 0 and "outside its recording" in res.output and "Traceback" not in res.output
