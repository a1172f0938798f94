"""Manifest assembly: a method's segments from the stage caches, written as
``segments/<method>.parquet`` and ``<method>.drops.json``.

Each method's segments are a pure function of one recording's cached stage outputs
(:func:`method_segments`). :func:`write_method` goes through the recordings in order and
writes the rows in Parquet row groups of ``row_group_rows`` as they come, so memory holds one
recording's caches and one row group whatever the corpus size (the thesis' full run:
16.9 M ``wx-diar-3s`` segments). The file appears atomically when the last row is in
(``corpus_tools.atomic``); its rows and schema are those of ``manifests.SEGMENTS_SCHEMA``.

Each cache entry a method reads is parsed once per recording (:class:`RecordingCache`); the
stages in between (``wx-asr``, ``wx-align`` of the ``wx-diar*`` methods) only have to be
cached: both callers have just read every entry (``run_segment``'s cache fill recomputes a
damaged one, ``corpus merge`` refuses to run with one), and parsing them again would double
the assembly's time.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from corpus_tools.atomic import atomic_path, write_text
from corpus_tools.manifests import SEGMENTS_SCHEMA, WorkDir
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.runner import METHOD_STAGES, StageCache, safe_id

#: languages whose words are written without spaces (as whisperx.alignment has them)
LANGUAGES_WITHOUT_SPACES = ("ja", "zh")
SEQ_CHUNK_S = 30.0
#: rows per Parquet row group; the rows of one group wait in Python lists (~60 MB for 50,000)
ROW_GROUP_ROWS = 50_000
#: recordings a worker process assembles per task, and the fewest worth starting a process for
CHUNK_RECORDINGS = 16
MIN_RECORDINGS_PER_WORKER = 100
#: the manifest's Arrow schema (polars reads ``large_string`` back as ``String``)
ARROW_SCHEMA = pa.schema([(name, pa.large_string() if dtype == pl.String else pa.float64())
                          for name, dtype in SEGMENTS_SCHEMA.items()])


# -- one recording ------------------------------------------------------------------------


def method_segments(method: str, rec: dict, cache: StageCache, phrases: set[str],
                    log: pp.DropLog, language: str = "nl") -> list[dict]:
    """The segments of one recording for one method, from cached stage outputs."""
    rid, dur = rec["recording_id"], float(rec["duration"])
    if method == "seq":
        n = int(dur // SEQ_CHUNK_S + 1e-9)
        segs = [{"start": i * SEQ_CHUNK_S, "end": (i + 1) * SEQ_CHUNK_S, "text": ""} for i in range(n)]
        log.add("seq-tail", [{"start": n * SEQ_CHUNK_S, "end": dur}] if dur > n * SEQ_CHUNK_S else [])
        return segs
    if method == "sad":
        regions = cache.get("vad", rid)["regions"]
        return pp.sanitise(pp.split_long([{"start": s, "end": e, "text": ""} for s, e in regions]), dur)
    if method.startswith("w-"):
        raw = cache.get("whisper", rid)["segments"]
        if method == "w-raw":
            return pp.sanitise(raw, dur)
        if any("words" in s for s in raw):  # not with --no-word-timestamps: no words to check
            raw = _words_in_speech(raw, cache, rid, language, log)
        return pp.postprocess(raw, merge="punctuation", min_len=_threshold(method), phrases=phrases,
                              file_duration=dur, log=log)
    if method == "wx-asr":
        return pp.sanitise(cache.get("wx-asr", rid)["segments"], dur)
    stage = "wx-align" if method == "wx-align" else "wx-diar"
    out = cache.get(stage, rid)
    segs = _words_in_speech(out["segments"], cache, rid, language, log)
    if stage == "wx-diar":
        turns = out.get("turns") or []
        before = {(s["start"], s["end"]) for s in out["segments"]}
        # a segment that lost words: the speaker of what is left (WhisperX's rule, on the new span)
        segs = [s if (s["start"], s["end"]) in before or not turns
                else {**s, "speaker": pp.dominant_speaker(s["start"], s["end"], turns)} for s in segs]
        segs = [{**s, "speaker": f"{rid}:{s['speaker']}" if s.get("speaker") else None} for s in segs]
    if method in ("wx-diar-1s", "wx-diar-3s"):
        return pp.postprocess(segs, merge="speaker", min_len=_threshold(method), phrases=phrases,
                              file_duration=dur, log=log)
    return pp.sanitise(segs, dur)


def _words_in_speech(segs: list[dict], cache: StageCache, rid: str, language: str, log: pp.DropLog) -> list[dict]:
    return pp.keep_words_in_speech(segs, cache.get("vad", rid)["regions"], log=log,
                                   joiner="" if language in LANGUAGES_WITHOUT_SPACES else " ")


def _threshold(method: str) -> float:
    return float(method.rsplit("-", 1)[1].rstrip("s"))


def segment_id(rid: str, start: float, end: float) -> str:
    # no dots: WebDataset splits member names at the first dot of the basename
    return f"{safe_id(rid)}_{int(round(start * 1000)):09d}_{int(round(end * 1000)):09d}"


def read_stages(method: str) -> tuple[str, ...]:
    """The stages whose output ``method`` reads: the last of its chain, and ``vad`` for the
    speech check. The others of ``METHOD_STAGES`` are only the inputs of the last."""
    stages = METHOD_STAGES[method]
    return tuple(s for s in stages if s == "vad" or s == stages[-1])


class RecordingCache:
    """A stage cache seen one recording at a time: each entry is read and parsed once, though
    both the check that a recording is complete and :func:`method_segments` ask for it."""

    def __init__(self, cache: StageCache):
        self.cache, self.rid, self.entries = cache, None, {}

    def get(self, stage: str, rid: str) -> dict | None:
        if rid != self.rid:  # the next recording: forget the last one's entries
            self.rid, self.entries = rid, {}
        if stage not in self.entries:
            self.entries[stage] = self.cache.get(stage, rid)
        return self.entries[stage]

    def complete(self, method: str, rid: str) -> bool:
        """Whether ``rid`` did not fail and every stage of ``method`` is cached (the stages it
        reads are parsed; for the others a file suffices, see the module docstring)."""
        if self.get("error", rid) is not None:
            return False
        read = read_stages(method)
        return (all(self.get(s, rid) is not None for s in read)
                and all(self.cache.path(s, rid).exists() for s in METHOD_STAGES[method] if s not in read))


# -- all recordings, in row groups ------------------------------------------------------------


@dataclass
class Tally:
    """What the assembly counts besides the rows, for ``drops.json``."""

    log: pp.DropLog
    failed_seconds: float = 0.0
    kept_seconds: float = 0.0
    segments: int = 0


class _Journal(pp.DropLog):
    """A drop log that keeps each addition, so that the additions of recordings assembled in
    worker processes are made in recording order (the same float sums as one process)."""

    def __init__(self):
        super().__init__()
        self.entries: list[pp.DropLog] = []

    def add(self, rule: str, segs: list[dict]) -> None:
        one = pp.DropLog()
        one.add(rule, segs)
        if one.counts:
            self.entries.append(one)


Rows = list[tuple[float, float, str, str | None]]  # start, end, text, speaker of each segment


def _one_recording(method: str, rec: dict, view: RecordingCache, phrases: set[str],
                   language: str) -> tuple[Rows | None, list[pp.DropLog]]:
    """A recording's rows (None when it failed or lacks a stage) and its drop-log additions."""
    if not view.complete(method, rec["recording_id"]):
        return None, []
    journal = _Journal()
    segs = method_segments(method, rec, view, phrases, journal, language)
    return [(s["start"], s["end"], s.get("text") or "", s.get("speaker")) for s in segs], journal.entries


def _chunk(method: str, recs: list[dict], cache: StageCache, phrases: set[str], language: str) -> list:
    """:func:`_one_recording` of each of ``recs`` (what a worker process runs)."""
    view = RecordingCache(cache)
    return [_one_recording(method, rec, view, phrases, language) for rec in recs]


def _per_recording(method: str, recs: list[dict], cache: StageCache, phrases: set[str], language: str,
                   workers: int) -> Iterator[tuple[dict, Rows | None, list[pp.DropLog]]]:
    """``(rec, rows, additions)`` of every recording, in order; with ``workers`` > 1 made by
    that many processes, chunks of recordings at a time (a few chunks ahead, no more)."""
    if workers <= 1:
        view = RecordingCache(cache)
        for rec in recs:
            yield rec, *_one_recording(method, rec, view, phrases, language)
        return
    chunks = [recs[i:i + CHUNK_RECORDINGS] for i in range(0, len(recs), CHUNK_RECORDINGS)]
    # spawn: polars and pyarrow threads in this process are not fork-safe
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        ahead: deque = deque()
        for chunk in chunks:
            ahead.append((chunk, pool.submit(_chunk, method, chunk, cache, phrases, language)))
            if len(ahead) > 2 * workers:
                yield from _results(*ahead.popleft())
        while ahead:
            yield from _results(*ahead.popleft())


def _results(chunk: list[dict], future) -> Iterator[tuple[dict, Rows | None, list[pp.DropLog]]]:
    for rec, (rows, additions) in zip(chunk, future.result()):
        yield rec, rows, additions


def row_groups(method: str, recs: list[dict], cache: StageCache, phrases: set[str], language: str,
               tally: Tally, row_group_rows: int = ROW_GROUP_ROWS, workers: int = 1) -> Iterator[pa.Table]:
    """The manifest's rows in recording order, as Arrow tables of ``row_group_rows`` rows (the
    last one shorter); adds the drops and failed seconds to ``tally`` on the way."""
    if row_group_rows < 1:
        raise ValueError("row_group_rows must be at least 1")
    cols: dict[str, list] = {name: [] for name in SEGMENTS_SCHEMA}
    for rec, rows, additions in _per_recording(method, recs, cache, phrases, language, workers):
        if rows is None:
            tally.failed_seconds += float(rec["duration"] or 0.0)
            continue
        for one in additions:
            tally.log.merge(one)
        _add_rows(cols, method, rec, rows, language)
        if len(cols["segment_id"]) >= row_group_rows:
            cols = yield from _flush(cols, row_group_rows, tally)
    while cols["segment_id"]:
        cols = yield from _flush(cols, row_group_rows, tally)


def _add_rows(cols: dict[str, list], method: str, rec: dict, rows: Rows, language: str) -> None:
    """Append one recording's segments to the column lists (the manifest's rounding: times
    to the millisecond, duration = rounded end - rounded start)."""
    rid, path = rec["recording_id"], rec["path"]
    for start, end, text, speaker in rows:
        cols["segment_id"].append(segment_id(rid, start, end))
        start, end = round(start, 3), round(end, 3)
        cols["recording_id"].append(rid)
        cols["path"].append(path)
        cols["start"].append(start)
        cols["end"].append(end)
        cols["duration"].append(end - start)
        cols["text"].append(text)
        cols["speaker"].append(speaker)
        cols["method"].append(method)
        cols["language"].append(language)
        cols["session"].append(rid)


def _flush(cols: dict[str, list], rows: int, tally: Tally) -> Iterator[pa.Table]:
    """Yield the first ``rows`` rows as a table; returns the column lists of the rest."""
    table = pa.Table.from_pydict({k: v[:rows] for k, v in cols.items()}, schema=ARROW_SCHEMA)
    tally.segments += table.num_rows
    # summed per group as polars sums a column: one group gives the in-memory frame's sum exactly
    tally.kept_seconds += float(pl.from_arrow(table.column("duration")).sum())
    yield table
    return {k: v[rows:] for k, v in cols.items()}


def assembly_workers(requested: int, recordings: int) -> int:
    """Processes for assembling ``recordings``: ``requested`` (0: one per CPU), but one per
    ``MIN_RECORDINGS_PER_WORKER`` at most, as starting a process costs a second or two."""
    wanted = requested if requested > 0 else (os.cpu_count() or 1)
    return max(1, min(wanted, recordings // MIN_RECORDINGS_PER_WORKER))


# -- the manifest and its drops ----------------------------------------------------------------


@dataclass
class MethodManifest:
    """One written method: where, how many segments, and its ``drops.json`` content."""

    method: str
    path: Path
    segments: int
    drops: dict


def write_method(wd: WorkDir, method: str, recs: Iterable[dict], cache: StageCache, phrases: set[str],
                 cfg: SegmentConfig, phrase_lists: list[str], *,
                 row_group_rows: int = ROW_GROUP_ROWS, workers: int = 1) -> MethodManifest:
    """Assemble ``method`` over ``recs`` (``runner.ok_recordings``) and write its manifest in
    row groups (atomically) and then its ``drops.json``: the seconds and counts each rule
    removed, the failed audio, the phrase lists, the settings and the models used.
    ``workers`` > 1 assembles the recordings in that many processes (the same bytes)."""
    recs = list(recs)
    tally = Tally(pp.DropLog())
    path = wd.segments(method)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, ARROW_SCHEMA, compression="zstd", write_statistics=True) as writer:
            for table in row_groups(method, recs, cache, phrases, cfg.language, tally, row_group_rows, workers):
                writer.write_table(table)
    drops = _drops(method, recs, cache, tally)
    drops["phrase_lists"] = list(phrase_lists)
    write_text(wd.segments_dir / f"{method}.drops.json",
               json.dumps({**drops, "method": method, "settings": method_settings(method, cfg, cache)}, indent=1))
    return MethodManifest(method, path, tally.segments, drops)


def _drops(method: str, recs: list[dict], cache: StageCache, tally: Tally) -> dict:
    return {"total_seconds": sum(float(r["duration"] or 0.0) for r in recs), "kept_seconds": tally.kept_seconds,
            "failed_seconds": tally.failed_seconds, "rules_seconds": tally.log.seconds,
            "rules_counts": tally.log.counts, "models": method_models(method, cache)}


def assemble(method: str, recs: list[dict], cache: StageCache, phrases: set[str], language: str, *,
             row_group_rows: int = ROW_GROUP_ROWS, workers: int = 1) -> tuple[pl.DataFrame, dict]:
    """The manifest in memory and its drops (without phrase lists and settings), for small
    work directories and tests; :func:`write_method` streams the same rows to disk."""
    tally = Tally(pp.DropLog())
    tables = list(row_groups(method, recs, cache, phrases, language, tally, row_group_rows, workers))
    df = pl.from_arrow(pa.concat_tables(tables)) if tables else pl.DataFrame(schema=SEGMENTS_SCHEMA)
    return df, _drops(method, recs, cache, tally)


def method_models(method: str, cache: StageCache) -> dict[str, dict]:
    """The identities of every model a method's segments depend on, by kind."""
    return {kind: ident for stage in METHOD_STAGES[method] for kind, ident in cache.key(stage)["models"].items()}


def method_settings(method: str, cfg: SegmentConfig, cache: StageCache) -> dict:
    """The options a method was made with plus the settings its stages' cache keys add (e.g.
    ``aligner``, ``speaker_crop_s``), so ``corpus score`` finds the very cache folders behind it."""
    options = asdict(cfg)
    added = {k: v for stage in METHOD_STAGES[method] for k, v in cache.key(stage).items() if k != "models"}
    return {**options, **{k: v for k, v in added.items() if k not in options}}
