"""Manifest assembly streamed in row groups (``segment.assemble``) gives the rows, schema and
drops of the earlier list-of-dicts assembly, for every method, over synthetic stage caches
(no models: the caches are written as the stages write them)."""

from __future__ import annotations

import json
import random

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from corpus_tools.manifests import SEGMENTS_SCHEMA, WorkDir, read_segments
from corpus_tools.segment import assemble as asm
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.runner import METHOD_STAGES, METHODS, STAGE_ORDER, StageCache

WORDS = ("de", "het", "een", "gemeente", "Arnhem", "zegt", "vandaag", "muziek", "ja.", "nee?")


def _recording(rng: random.Random, duration: float) -> dict[str, dict]:
    """Every stage's output for one recording (the formats of ``backends``' docstring)."""
    regions, sentences, t, speaker = [], [], rng.uniform(0.0, 2.0), "SPEAKER_00"
    while t < duration - 5:
        words, w_t = [], t
        for _ in range(rng.randint(1, 9)):
            start = round(w_t + rng.uniform(0, 0.2), 3)
            end = round(start + rng.uniform(0.1, 0.6), 3)
            words.append({"word": rng.choice(WORDS), "start": start, "end": end, "score": 0.9,
                          "speaker": speaker} if rng.random() > 0.05 else
                         {"word": "eh", "start": None, "end": None, "score": None})
            w_t = end
        text = " ".join(w["word"] for w in words) + rng.choice(("", ".", "..."))
        sentences.append({"start": words[0]["start"] or t, "end": w_t, "text": text, "speaker": speaker,
                          "words": words})
        if rng.random() < 0.8:  # the rest lies outside speech: dropped as off-speech
            regions.append([round(t - 0.1, 3), round(w_t + rng.uniform(-0.3, 0.3), 3)])
        if rng.random() < 0.5:
            speaker = f"SPEAKER_0{rng.randint(0, 3)}"
        t = w_t + rng.uniform(0.1, 4.0)
    plain = [{**s, "words": [{k: v for k, v in w.items() if k != "speaker"} for w in s["words"]]}
             for s in sentences]
    for s in plain:
        del s["speaker"]
    turns = [[s["start"], s["end"], s["speaker"]] for s in sentences]
    return {"vad": {"regions": regions}, "whisper": {"segments": plain},
            "wx-asr": {"segments": [{k: s[k] for k in ("start", "end", "text")} for s in plain], "language": "nl"},
            "wx-align": {"segments": plain}, "wx-diar": {"segments": sentences, "turns": turns}}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Twelve recordings: complete ones, one whose decode failed, one lacking a stage."""
    wd = WorkDir(tmp_path_factory.mktemp("assemble"))
    cache = StageCache(wd, {s: {"models": {}} for s in STAGE_ORDER})
    rng = random.Random(7)
    recs = []
    for i in range(12):
        rid = f"rec {i}" if i == 3 else f"rec{i:02d}"  # one id that needs a safe form
        duration = round(rng.uniform(40.0, 200.0), 3)
        recs.append({"recording_id": rid, "path": f"/archive/{rid}.mp4", "duration": duration})
        if i == 5:
            cache.put("error", rid, {"reason": "decode failed: truncated"})
            continue
        for stage, out in _recording(rng, duration).items():
            if not (i == 8 and stage == "wx-align"):  # a part that never ran the stage
                cache.put(stage, rid, out)
    return wd, cache, recs


def _old_assemble(method: str, recs: list[dict], cache: StageCache, phrases: set[str],
                  language: str) -> tuple[pl.DataFrame, dict]:
    """The assembly as it was: every row a dict, one DataFrame at the end."""
    log = pp.DropLog()
    rows = []
    failed_s = 0.0
    for rec in recs:
        rid = rec["recording_id"]
        err = cache.get("error", rid)
        if err is not None or any(cache.get(s, rid) is None for s in METHOD_STAGES[method]):
            failed_s += float(rec["duration"] or 0.0)
            continue
        for s in asm.method_segments(method, rec, cache, phrases, log, language):
            rows.append({
                "segment_id": asm.segment_id(rid, s["start"], s["end"]), "recording_id": rid,
                "path": rec["path"], "start": round(s["start"], 3), "end": round(s["end"], 3),
                "duration": round(s["end"], 3) - round(s["start"], 3), "text": s.get("text") or "",
                "speaker": s.get("speaker"), "method": method, "language": language, "session": rid,
            })
    df = pl.DataFrame(rows, schema=SEGMENTS_SCHEMA) if rows else pl.DataFrame(schema=SEGMENTS_SCHEMA)
    total = sum(float(r["duration"] or 0.0) for r in recs)
    drops = {"total_seconds": total, "kept_seconds": float(df["duration"].sum()) if df.height else 0.0,
             "failed_seconds": failed_s, "rules_seconds": log.seconds, "rules_counts": log.counts,
             "models": asm.method_models(method, cache)}
    return df, drops


@pytest.mark.parametrize("method", METHODS)
def test_streamed_assembly_equals_the_list_of_dicts_assembly(caches, method):
    wd, cache, recs = caches
    phrases = pp.load_phrases("nl")
    old_df, old_drops = _old_assemble(method, recs, cache, phrases, "nl")
    assert old_df.height > 32  # rows for three groups of 16 at least
    df, drops = asm.assemble(method, recs, cache, phrases, "nl", row_group_rows=16)
    assert_frame_equal(df, old_df)
    # summed per row group: equal up to the order of float additions
    assert drops.pop("kept_seconds") == pytest.approx(old_drops.pop("kept_seconds"), rel=1e-12)
    assert drops == old_drops
    one_group, one_drops = asm.assemble(method, recs, cache, phrases, "nl")
    assert_frame_equal(one_group, old_df)
    assert one_drops["kept_seconds"] == float(old_df["duration"].sum())  # one group: the very same sum


def test_worker_processes_give_the_same_rows_and_drops(caches, monkeypatch):
    wd, cache, recs = caches
    monkeypatch.setattr(asm, "CHUNK_RECORDINGS", 2)  # several chunks per worker, in flight at once
    phrases = pp.load_phrases("nl")
    for method in ("wx-diar-3s", "w-pp-1s"):
        df, drops = asm.assemble(method, recs, cache, phrases, "nl", row_group_rows=16)
        par_df, par_drops = asm.assemble(method, recs, cache, phrases, "nl", row_group_rows=16, workers=2)
        assert_frame_equal(par_df, df)
        assert json.dumps(par_drops) == json.dumps(drops)  # floats summed in the same order, keys too
    assert asm.assembly_workers(8, 250) == 2 and asm.assembly_workers(1, 10_000) == 1


@pytest.mark.parametrize("method", ["wx-diar-3s", "sad"])
def test_manifest_is_written_in_row_groups_with_the_same_rows(caches, method, tmp_path):
    wd, cache, recs = caches
    cfg = SegmentConfig()
    phrases = pp.load_phrases("nl")
    old_df, old_drops = _old_assemble(method, recs, cache, phrases, "nl")
    out = WorkDir(tmp_path)
    written = asm.write_method(out, method, recs, cache, phrases, cfg, ["nl.txt"], row_group_rows=10)
    assert written.path == out.segments(method) and written.segments == old_df.height
    assert pq.ParquetFile(written.path).metadata.num_row_groups == -(-old_df.height // 10)
    assert_frame_equal(read_segments(written.path), old_df)
    assert pl.read_parquet_schema(written.path) == SEGMENTS_SCHEMA
    drops = json.loads((out.segments_dir / f"{method}.drops.json").read_text())
    assert list(drops) == ["total_seconds", "kept_seconds", "failed_seconds", "rules_seconds", "rules_counts",
                           "models", "phrase_lists", "method", "settings"]  # the earlier file's order
    assert drops["kept_seconds"] == pytest.approx(old_drops["kept_seconds"], rel=1e-12)
    assert drops["failed_seconds"] == old_drops["failed_seconds"] > 0
    assert drops["rules_seconds"] == old_drops["rules_seconds"] and drops["phrase_lists"] == ["nl.txt"]
    assert not [p for p in out.segments_dir.iterdir() if p.name.endswith(".tmp")]


def test_no_rows_gives_an_empty_manifest_with_the_schema(caches, tmp_path):
    wd, cache, recs = caches
    failed = [r for r in recs if r["recording_id"] == "rec05"]
    written = asm.write_method(WorkDir(tmp_path), "wx-diar-3s", failed, cache, set(), SegmentConfig(), [])
    df = read_segments(written.path)
    assert df.height == 0 and df.schema == pl.Schema(SEGMENTS_SCHEMA)
    assert written.drops["kept_seconds"] == 0.0 and written.drops["failed_seconds"] == failed[0]["duration"]


def test_a_damaged_entry_of_a_read_stage_counts_the_recording_as_failed(caches, tmp_path):
    wd, cache, recs = caches
    rec = dict(recs[0], recording_id="torn")
    for stage in STAGE_ORDER:
        cache.put(stage, "torn", cache.get(stage, recs[0]["recording_id"]))
    cache.path("wx-diar", "torn").write_text('{"segme')  # written by hand: the runner writes atomically
    df, drops = asm.assemble("wx-diar-3s", [rec], cache, set(), "nl")
    assert df.height == 0 and drops["failed_seconds"] == rec["duration"]
