"""`corpus score`: measure each segmentation of a work directory against reference annotations.

``run_score`` is the one entry point (CLI, report and tests call it): it reads
``recordings.parquet``, ``segments/<method>.parquet`` and the reference, and writes

``segments/scores.csv``                one row per method (micro-averaged over scored recordings)
``segments/scores_per_recording.csv``  one row per (method, recording)
``segments/scores.json``               both tables plus what was matched, skipped and why
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl

from corpus_tools.atomic import write_text
from corpus_tools.manifests import ManifestError, WorkDir, read_segments
import corpus_tools.score.metrics as metrics
from corpus_tools.score.reference import ReferenceError, load_references, match_references
from corpus_tools.score.turns import cached_turns, has_diarization
from corpus_tools.segment.runner import METHODS, ok_recordings

DEFAULT_COLLARS = (0.0, 0.25)
SCORES_CSV, SCORES_JSON, PER_RECORDING_CSV = "scores.csv", "scores.json", "scores_per_recording.csv"


@dataclass
class ScoreResult:
    methods: pl.DataFrame  # one row per method
    per_recording: pl.DataFrame  # one row per (method, recording)
    scored: list[str]  # recording ids scored
    skipped: list[str]  # ok recordings without a reference
    unmatched: list[str]  # reference ids that match no ok recording
    notes: list[str] = field(default_factory=list)
    collars: tuple[float, ...] = DEFAULT_COLLARS
    paths: dict[str, Path] = field(default_factory=dict)


def score_columns(collars: Sequence[float]) -> list[str]:
    cols = ["method", "recordings", "segments", "kept_h", "reference_speech_h", "speech_precision",
            "speech_recall", "music_share", "noise_share", "silence_share", "speaker_purity",
            "multi_speaker_segments", "multi_speaker_h", "edges", "cut_edge_share"]
    cols += [f"{m}_collar{c:g}" for c in collars for m in ("der", "jer")]
    return cols + ["label_purity", "diarized_recordings"]


def _schema(collars: Sequence[float], per_recording: bool) -> dict[str, pl.DataType]:
    ints = {"recordings", "segments", "multi_speaker_segments", "edges", "diarized_recordings"}
    schema: dict[str, pl.DataType] = {"method": pl.String}
    if per_recording:
        schema["recording_id"] = pl.String
    for c in score_columns(collars)[1:]:
        schema[c] = pl.Int64 if c in ints else pl.Float64
    return schema


def run_score(workdir: str | os.PathLike, reference: str | os.PathLike, methods: Sequence[str] | None = None,
              *, collars: Sequence[float] = DEFAULT_COLLARS, write: bool = True) -> ScoreResult:
    """Score ``methods`` (default: every segmentation present) of ``workdir`` against
    ``reference`` (a file or folder of RTTM / Audacity labels / label CSV / CTM).

    Raises ManifestError / ReferenceError (ValueError) with a one-line message for bad input.
    """
    wd = WorkDir(workdir)
    if not wd.recordings.exists():
        raise ManifestError(f"{wd.recordings} not found: is {workdir} a work directory (`corpus ingest -o`)?")
    collars = tuple(float(c) for c in collars)
    if any(c < 0 for c in collars):
        raise ValueError("collars must be >= 0 seconds")
    present = wd.methods_present()
    if not present:
        raise ManifestError(f"no segmentations in {workdir}: run `corpus segment {workdir} --method ...` first")
    wanted = list(dict.fromkeys(methods)) if methods else present
    missing = [m for m in wanted if m not in present]
    if missing:
        raise ManifestError(f"no segments for method(s) {', '.join(missing)} in {workdir} "
                            f"(present: {', '.join(present)})")
    wanted.sort(key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))

    recs = {r["recording_id"]: r for r in ok_recordings(wd)}
    matched, unmatched = match_references(load_references(reference), list(recs.values()))
    notes: list[str] = []
    no_turns = sorted(rid for rid, ref in matched.items() if not ref.has_turns)
    if no_turns:
        notes.append(f"{len(no_turns)} recording(s) have labels or word times but no RTTM speaker turns and "
                     f"are not scored: {short_list(no_turns)}")
    scored = sorted(rid for rid, ref in matched.items() if ref.has_turns)
    skipped = sorted(set(recs) - set(scored) - set(no_turns))
    if not scored and no_turns:
        raise ReferenceError(f"the references for {short_list(no_turns)} hold labels or word times but no RTTM "
                             f"speaker turns: give an RTTM per recording (speech comes from its SPEAKER lines)")
    if not scored:
        raise ReferenceError(f"no reference matches a recording of {workdir} "
                             f"(references for: {short_list(unmatched) or 'none'}; recordings: {short_list(sorted(recs))})")

    method_rows, rec_rows = [], []
    for method in wanted:
        seg = read_segments(wd.segments(method)).filter(pl.col("recording_id").is_in(scored))
        by_rec: dict[str, list[metrics.Hyp]] = {rid: [] for rid in scored}
        for r in seg.sort("recording_id", "start", "end").iter_rows(named=True):
            by_rec[r["recording_id"]].append((float(r["start"]), float(r["end"]), r["speaker"]))
        total = metrics.RecordingSums()
        no_cache = []
        for rid in scored:
            ref, segs = matched[rid], by_rec[rid]
            sums = metrics.recording_sums(segs, ref)
            turns = cached_turns(wd, method, rid) if has_diarization(method) else None
            if has_diarization(method) and turns is None:
                no_cache.append(rid)
            labelled = any(s[2] is not None for s in segs)
            if turns is not None or labelled:
                sums.diarization = metrics.diarization_sums(ref, turns, segs, float(recs[rid]["duration"] or 0.0),
                                                            collars)
                sums.diarized_recordings = int(turns is not None)
            rec_rows.append({"method": method, "recording_id": rid, **metrics.rates(sums, collars)})
            total += sums
        if no_cache:
            notes.append(f"{method}: no cached diarization turns for {len(no_cache)} recording(s) "
                         f"({short_list(no_cache)}); DER/JER cover the others")
        method_rows.append({"method": method, **metrics.rates(total, collars)})

    result = ScoreResult(pl.DataFrame(method_rows, schema=_schema(collars, False)),
                         pl.DataFrame(rec_rows, schema=_schema(collars, True)),
                         scored, skipped, unmatched, notes, collars)
    if write:
        result.paths = write_scores(wd, result, reference)
    return result


def write_scores(wd: WorkDir, result: ScoreResult, reference: str | os.PathLike) -> dict[str, Path]:
    out = wd.segments_dir
    paths = {"csv": out / SCORES_CSV, "per_recording": out / PER_RECORDING_CSV, "json": out / SCORES_JSON}
    write_text(paths["csv"], result.methods.write_csv())
    write_text(paths["per_recording"], result.per_recording.write_csv())
    write_text(paths["json"], json.dumps({
        "reference": str(Path(reference).resolve()), "collars": list(result.collars),
        "second_speaker_min_s": metrics.SECOND_SPEAKER_MIN_S,
        "word_cut_tolerance_s": metrics.WORD_CUT_TOLERANCE_S,
        "scored": result.scored, "skipped": result.skipped, "unmatched_references": result.unmatched,
        "notes": result.notes, "methods": result.methods.to_dicts(),
        "per_recording": result.per_recording.to_dicts()}, indent=1))
    return paths


def read_scores(wd: WorkDir) -> dict | None:
    """``segments/scores.json`` as written by ``run_score`` (None when absent or unreadable)."""
    try:
        return json.loads((wd.segments_dir / SCORES_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def short_list(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", … ({len(items) - n} more)" if len(items) > n else "")
