"""`corpus verify WORKDIR` scans a segments manifest in row groups and reports exactly what
the earlier check of the whole manifest in memory reported, problem for problem; `corpus
stats` aggregates it the same way. No models: the work directory is written by hand."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from corpus_tools import verify as vf
from corpus_tools.manifests import RECORDINGS_SCHEMA, SEGMENTS_SCHEMA, WorkDir, conform, write_recordings
from corpus_tools.stats import method_stats


def _old_check_segments(method: str, df: pl.DataFrame, recs: pl.DataFrame, drops_path) -> vf.Report:
    """The check as it was: the whole manifest in memory, a dict per row."""
    rep = vf.Report("")
    name = f"segments/{method}"
    probs = []
    if df["segment_id"].null_count() or not df["segment_id"].is_unique().all():
        dup = df.filter(pl.col("segment_id").is_duplicated())["segment_id"].head(1).to_list()
        probs.append(f"segment_id null or duplicated (e.g. {dup[0] if dup else 'null'})")
    other = df.filter(pl.col("method") != method)
    if other.height:
        probs.append(f"{other.height} row(s) with method {other['method'][0]!r}")
    bad_dur = df.filter((pl.col("duration") - (pl.col("end") - pl.col("start"))).abs() > 1e-6)
    if bad_dur.height:
        probs.append(f"{bad_dur.height} row(s) where duration != end - start")
    paths = dict(recs.select("recording_id", "path").iter_rows())
    wrong_path = [r["segment_id"] for r in df.select("segment_id", "recording_id", "path").iter_rows(named=True)
                  if r["recording_id"] in paths and paths[r["recording_id"]] != r["path"]]
    if wrong_path:
        probs.append(f"{len(wrong_path)} row(s) whose path is not their recording's, e.g. {wrong_path[0]}")
    hours = float(df["duration"].sum()) / 3600.0 if df.height else 0.0
    if drops_path.is_file():
        kept = json.loads(drops_path.read_text())["kept_seconds"]
        if not math.isclose(kept / 3600.0, hours, rel_tol=1e-9, abs_tol=1e-9):
            probs.append(f"{drops_path.name} says {kept / 3600:.6f} h kept, the manifest holds {hours:.6f} h")
    rep.check(name, probs, f"{df.height} segments, {hours:.4f} h")
    rep.merge(vf._inside_recordings(df.select("segment_id", "recording_id", "start", "end").to_dicts(), recs, method))
    rep.totals[f"{method}_segments"] = df.height
    rep.totals[f"{method}_hours"] = hours
    return rep


def _recordings() -> pl.DataFrame:
    rows = [{"recording_id": f"r{i}", "path": f"/a/r{i}.wav", "status": "ok", "reason": None, "duration": 600.0}
            for i in range(20)]
    rows[3].update(status="failed", reason="truncated")
    rows[4]["duration"] = None
    rows.append({**rows[7], "path": "/a/again.wav"})  # an id twice: the last row counts
    return conform(pl.DataFrame(rows), RECORDINGS_SCHEMA)


def _segments(n: int, damaged: bool) -> pl.DataFrame:
    rows = []
    for i in range(n):
        rid = f"r{i % 20}" if i % 20 != 3 else "r2"  # r3 failed at ingest
        start = float(i % 50) * 11.0
        rows.append({"segment_id": f"{rid}_{i:06d}", "recording_id": rid, "path": f"/a/{rid}.wav",
                     "start": start, "end": start + 10.0, "duration": 10.0, "text": "hallo",
                     "speaker": None, "method": "sad", "language": "nl", "session": rid})
    for r in rows:
        if r["recording_id"] == "r7":
            r["path"] = "/a/again.wav"
    if damaged:
        rows[5]["segment_id"] = rows[900]["segment_id"] = rows[2]["segment_id"]  # duplicated ids
        rows[11]["segment_id"] = None
        rows[12]["method"] = "wx-asr"
        rows[13]["duration"] = 3.0
        rows[14]["path"] = "/elsewhere.wav"
        rows[15]["recording_id"] = "nowhere"
        rows[16]["recording_id"] = None
        rows[17].update(start=None)
        rows[18].update(start=5.0, end=5.0, duration=0.0)
        rows[19].update(start=float("nan"))
        rows[21].update(start=595.0, end=610.0, duration=15.0)  # past its recording's end
        rows[22].update(start=-1.0)
        rows[24].update(end=float("nan"))
        rows[25].update(recording_id="r3", path="/a/r3.wav")
    return pl.DataFrame(rows, schema=SEGMENTS_SCHEMA)


@pytest.mark.parametrize("damaged", [False, True])
def test_streamed_workdir_check_reports_what_the_in_memory_check_did(tmp_path, damaged):
    wd = WorkDir(tmp_path)
    recs = _recordings()
    write_recordings(recs, wd.recordings)
    seg = _segments(3000, damaged)
    wd.segments_dir.mkdir()
    # small row groups: the scan crosses many of them
    seg.write_parquet(wd.segments("sad"), row_group_size=128)
    drops = wd.segments_dir / "sad.drops.json"
    drops.write_text(json.dumps({"kept_seconds": float(seg["duration"].sum()) + (7.0 if damaged else 0.0)}))

    rep = vf.verify_workdir(tmp_path, methods=["sad"])
    old = _old_check_segments("sad", seg, recs, drops)
    got = [c for c in rep.checks if c.name.startswith(("segments/", "inside"))]
    assert [(c.name, c.ok, c.detail) for c in got] == [(c.name, c.ok, c.detail) for c in old.checks]
    assert [p for p in rep.problems if not p.startswith("recordings:")] == old.problems
    assert {k: v for k, v in rep.totals.items() if k.startswith("sad_")} == pytest.approx(old.totals)
    assert bool(old.problems) == damaged  # (the recordings themselves have problems either way)
    if damaged:
        text = " ".join(old.problems)
        for what in ("duplicated", "method 'wx-asr'", "duration != end", "whose path", "not in recordings",
                     "has status failed", "bad time range", "after its recording", "h kept"):
            assert what in text


def test_stats_aggregate_the_manifest_as_before(tmp_path):
    wd = WorkDir(tmp_path)
    write_recordings(_recordings(), wd.recordings)
    seg = _segments(3000, False).with_columns(duration=pl.col("duration") + pl.int_range(pl.len()) / 1000)
    wd.segments_dir.mkdir()
    seg.write_parquet(wd.segments("sad"), row_group_size=128)
    row = method_stats(wd, ["sad"]).row(0, named=True)
    assert row["segments"] == 3000
    assert row["hours"] == pytest.approx(float(seg["duration"].sum()) / 3600, rel=1e-12)
    assert (row["mean_s"], row["min_s"], row["max_s"]) == pytest.approx(
        (seg["duration"].mean(), seg["duration"].min(), seg["duration"].max()), rel=1e-12)


def test_damaged_cache_entries_are_found_by_worker_processes_too(tmp_path, monkeypatch):
    wd = WorkDir(tmp_path)
    folder = tmp_path / "cache" / "vad-0123456789"
    folder.mkdir(parents=True)
    for i in range(300):
        (folder / f"r{i:03d}.json").write_text('{"regions": [[0.0, 1.5]]}' if i % 97 else '{"regio')
    (folder / "r050.json").write_bytes(b'{"regions": "\xff"}')  # not UTF-8
    (folder / ".r999.json.1.ab.tmp").write_text("{")
    one = vf._check_caches(wd, workers=1)
    monkeypatch.setattr(vf, "MIN_ENTRIES_PER_WORKER", 10)
    monkeypatch.setattr(vf, "CACHE_CHUNK", 7)
    two = vf._check_caches(wd, workers=2)
    assert (one.checks, one.warnings) == (two.checks, two.warnings)
    assert one.checks[0].detail == "295 of 300 cache entries readable" and len(one.warnings) == 2
