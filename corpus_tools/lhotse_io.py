"""Lhotse in and out: segments manifests ↔ Lhotse RecordingSet / SupervisionSet / CutSet.

Out (``corpus export lhotse``): every recording a segment comes from becomes a Lhotse
``Recording`` with its real source path, sample rate, channels and duration — taken from
``recordings.parquet`` when there is one (the ingest probe, no I/O; ``Recording.from_file``
would take a video's duration for an mp4), else probed once per file with ffprobe — and
every segment a ``SupervisionSegment`` on it (speaker, text as in the manifest, language,
gender; ``custom`` holds method, session, split and the manifest's other columns). Three
files are written, with the Lhotse names recipes use:

    recordings.jsonl.gz     RecordingSet
    supervisions.jsonl.gz   SupervisionSet
    cuts.jsonl.gz           CutSet: one cut per segment (``trim_to_supervisions``), cut id =
                            segment id, so samplers batch utterances as our shards hold them

A segment of a multi-channel recording covers all its channels (Lhotse's ``MultiCut``;
``cut.to_mono(mono_downmix=True)`` gives the mono mix our shards hold). The files are
written atomically and are the same bytes for the same manifest (gzip without a time stamp).
A segment that runs up to 0.5 s past the end of its recording (a container duration a little
shorter than what decodes) ends at the recording's end there, and the export says how many.

In (``corpus import lhotse``): a CutSet, a SupervisionSet (with the RecordingSet of the same
name, ``..._supervisions_...`` → ``..._recordings_...``) or a folder of either — a recipe's
output folder — becomes a segments manifest. Supervisions of cuts count once each, at
``cut.start + supervision.start``. Recipe fields are mapped: language names become ISO
codes ("English" → ``en``), the text is kept as given (LibriSpeech's upper case: the shard
writer adds the letter form), ``method`` is ``lhotse`` (or what our own export recorded),
and ``session`` is what our export recorded; else, when each recording is one utterance, the
chapter or book of a ``SPK-CHAPTER-UTT`` / ``SPK_BOOK_UTT`` id or else the speaker (as our
LibriSpeech, MLS and Common Voice importers set it); else the recording id. ``split`` comes from our export or from the part in the file name
(``librispeech_supervisions_dev-clean`` → dev).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Iterable

import polars as pl

from corpus_tools.manifests import SEGMENTS_SCHEMA, ManifestError, conform

log = logging.getLogger(__name__)

RECORDINGS_FILE = "recordings.jsonl.gz"
SUPERVISIONS_FILE = "supervisions.jsonl.gz"
CUTS_FILE = "cuts.jsonl.gz"
_MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl", ".json")
_OURS = ("method", "session", "split")  # segments columns carried in a supervision's custom


# -- out ------------------------------------------------------------------------------------


def _scalar(v):
    """A JSON-safe scalar for ``custom`` (None for NaN and nested values)."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if not math.isfinite(v) else v
    return None


def _recording_info(segments: pl.DataFrame, recordings: pl.DataFrame | None) -> dict[str, dict]:
    """recording_id → {path, duration, sample_rate, channels}: from ``recordings`` when it
    has the recording, else from one ffprobe per distinct file."""
    from corpus_tools.audio import AudioError, probe

    known: dict[str, dict] = {}
    if recordings is not None:
        for r in recordings.iter_rows(named=True):
            if r.get("duration") and r.get("sample_rate") and r.get("channels"):
                known[r["recording_id"]] = {"path": r["path"], "duration": float(r["duration"]),
                                            "sample_rate": int(r["sample_rate"]),
                                            "channels": int(r["channels"])}
    out: dict[str, dict] = {}
    probed: dict[str, dict] = {}
    pairs = segments.select("recording_id", "path").unique().sort("recording_id", "path")
    for rid, path in pairs.iter_rows():
        if rid in out:
            if out[rid]["path"] != path:
                raise ManifestError(f"recording {rid} has segments from two files: {out[rid]['path']} "
                                    f"and {path}")
            continue
        info = known.get(rid)
        if info is None or info["path"] != path:
            if path not in probed:
                try:
                    a = probe(path)
                except AudioError as exc:
                    raise ManifestError(f"cannot read {path} (recording {rid}): {exc}") from None
                probed[path] = {"path": path, "duration": a.duration, "sample_rate": a.sample_rate,
                                "channels": a.channels}
            info = probed[path]
        out[rid] = info
    return out


# Lhotse loads audio up to this much shorter or longer than its manifest says (its own default
# LHOTSE_AUDIO_DURATION_MISMATCH_TOLERANCE); a segment may overrun its recording by as much.
END_TOLERANCE = 0.5


def build_lhotse(segments: pl.DataFrame, recordings: pl.DataFrame | None = None):
    """``(RecordingSet, SupervisionSet, CutSet, clipped)`` of a segments manifest (see the
    module doc). A segment that ends past its recording (the container's duration can be a
    little shorter than what decodes) by at most ``END_TOLERANCE`` seconds ends at the
    recording's end instead; ``clipped`` counts them. Anything further off is an error."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource
    from lhotse.utils import compute_num_samples

    if "segment_id" not in segments.columns:
        raise ManifestError("segments manifest lacks required columns: segment_id")
    df = conform(segments, SEGMENTS_SCHEMA)
    if df.height == 0:
        raise ManifestError("the segments manifest is empty: nothing to export")
    bad = df.filter(pl.col("segment_id").is_null() | pl.col("recording_id").is_null()
                    | pl.col("path").is_null() | pl.col("start").is_null()
                    | (pl.col("end").is_null() & pl.col("duration").is_null()))
    if bad.height:
        raise ManifestError(f"{bad.height} segments lack segment_id/recording_id/path/start/end")
    dup = df.filter(pl.col("segment_id").is_duplicated())["segment_id"].unique().sort()
    if dup.len():
        raise ManifestError(f"duplicate segment_id in manifest: {', '.join(dup.head(5))}")
    df = df.with_columns(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start")).alias("duration"))
    info = _recording_info(df, recordings)

    recs, lengths = [], {}
    for rid in sorted(info):
        i = info[rid]
        n = compute_num_samples(i["duration"], i["sample_rate"])
        recs.append(Recording(id=rid, sources=[AudioSource(type="file", channels=list(range(i["channels"])),
                                                           source=str(i["path"]))],
                              sampling_rate=i["sample_rate"], num_samples=n, duration=n / i["sample_rate"]))
        lengths[rid] = n / i["sample_rate"]
    extra = [c for c in df.columns if c not in SEGMENTS_SCHEMA and c != "gender"]
    sups, clipped = [], 0
    for r in df.sort("recording_id", "start", "segment_id").iter_rows(named=True):
        ch = info[r["recording_id"]]["channels"]
        start, duration, length = float(r["start"]), float(r["duration"]), lengths[r["recording_id"]]
        if start < 0 or duration <= 0 or start >= length or start + duration > length + END_TOLERANCE:
            raise ManifestError(f"segment {r['segment_id']} [{start:.3f}, {start + duration:.3f}] s lies "
                                f"outside its recording {r['recording_id']} (0 to {length:.3f} s)")
        if start + duration > length:
            duration = length - start
            clipped += 1
        custom = {k: _scalar(r.get(k)) for k in (*_OURS, *extra) if _scalar(r.get(k)) is not None}
        gender = r.get("gender") if isinstance(r.get("gender"), str) else None
        sups.append(SupervisionSegment(
            id=r["segment_id"], recording_id=r["recording_id"], start=start,
            duration=duration, channel=0 if ch == 1 else list(range(ch)),
            text=r.get("text") or "", speaker=r.get("speaker"), language=r.get("language"),
            gender=gender, custom=custom or None))
    rs = RecordingSet.from_recordings(recs)
    ss = SupervisionSet.from_segments(sups)
    cuts = CutSet.from_manifests(recordings=rs, supervisions=ss).trim_to_supervisions(
        keep_overlapping=False).to_eager()
    return rs, ss, cuts, clipped


def _write_jsonl_gz(items: Iterable[dict], path: Path) -> None:
    """Lhotse's JSONL format, gzipped without a time stamp (same input → same bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        for item in items:
            gz.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_lhotse(segments: pl.DataFrame, out_dir: str | os.PathLike, *,
                  recordings: pl.DataFrame | None = None) -> dict:
    """Write ``recordings.jsonl.gz``, ``supervisions.jsonl.gz`` and ``cuts.jsonl.gz`` to
    ``out_dir``; returns ``{recordings, supervisions, cuts, hours, clipped, files}``."""
    rs, ss, cuts, clipped = build_lhotse(segments, recordings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, manifest in ((RECORDINGS_FILE, rs), (SUPERVISIONS_FILE, ss), (CUTS_FILE, cuts)):
        _write_jsonl_gz(manifest.to_dicts(), out / name)
        files[name] = str(out / name)
    hours = sum(s.duration for s in ss) / 3600.0
    return {"recordings": len(rs), "supervisions": len(ss), "cuts": len(cuts), "hours": hours,
            "clipped": clipped, "files": files}


# -- in -------------------------------------------------------------------------------------


def _is_manifest(p: Path, kind: str) -> bool:
    return p.is_file() and kind in p.name and p.name.endswith(_MANIFEST_SUFFIXES)


def _part(name: str, kind: str) -> str | None:
    """``librispeech_supervisions_dev-clean.jsonl.gz`` → ``dev-clean``."""
    stem = name
    for suf in _MANIFEST_SUFFIXES:
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
            break
    tail = stem.split(kind, 1)[1].lstrip("_-.") if kind in stem else ""
    return tail or None


def _sources(src: Path) -> list[tuple[Path, Path | None, str]]:
    """``(manifest, recordings or None, kind)`` to read for ``src`` (a file or a folder)."""
    def pair(sup: Path) -> Path | None:
        rec = sup.with_name(sup.name.replace("supervisions", "recordings"))
        return rec if rec.is_file() else None

    if src.is_file():
        if "supervisions" in src.name:
            return [(src, pair(src), "supervisions")]
        return [(src, None, "cuts")]
    if not src.is_dir():
        raise FileNotFoundError(f"no such Lhotse manifest or folder: {src}")
    sups = sorted(p for p in src.iterdir() if _is_manifest(p, "supervisions"))
    if sups:
        return [(p, pair(p), "supervisions") for p in sups]
    cuts = sorted(p for p in src.iterdir() if _is_manifest(p, "cuts"))
    if cuts:
        return [(p, None, "cuts") for p in cuts]
    from corpus_tools.importers.common import CorpusLayoutError

    raise CorpusLayoutError(f"{src} holds no Lhotse cuts or supervisions manifests "
                        f"(*cuts*.jsonl.gz, *supervisions*.jsonl.gz)")


def _load(path: Path):
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest_lazy

    try:
        m = load_manifest_lazy(path)
    except Exception as exc:  # lhotse raises several types for files it cannot parse
        raise ManifestError(f"cannot read Lhotse manifest {path}: {exc}") from None
    if m is None:
        raise ManifestError(f"{path} is empty or not a Lhotse manifest")
    if not isinstance(m, (CutSet, SupervisionSet, RecordingSet)):
        raise ManifestError(f"{path} is a {type(m).__name__}: give a CutSet or a SupervisionSet")
    return m


def _file_source(recording, skipped: dict) -> str | None:
    if recording is None:
        skipped["no recording"] = skipped.get("no recording", 0) + 1
        return None
    src = recording.sources[0]
    if src.type != "file":
        skipped[f"{src.type} audio source"] = skipped.get(f"{src.type} audio source", 0) + 1
        return None
    return str(src.source)


_BOOK_UTT = re.compile(r"^(\d+[-_]\d+)[-_]\d+$")  # LibriSpeech SPK-CHAPTER-UTT, MLS SPK_BOOK_UTT


def _row(sup, start: float, path: str, kind_part: str | None) -> dict:
    from corpus_tools.importers.common import language_code, layout_split

    custom = dict(sup.custom or {})
    row = {"segment_id": sup.id, "recording_id": sup.recording_id, "path": path,
           "start": float(start), "end": float(start) + float(sup.duration),
           "duration": float(sup.duration), "text": sup.text or "", "speaker": sup.speaker,
           "language": language_code(sup.language), "method": custom.pop("method", None) or "lhotse",
           "session": custom.pop("session", None), "gender": sup.gender}
    split = custom.pop("split", None)
    if split is None and kind_part:
        split = layout_split(kind_part)
    row["split"] = split
    if kind_part:
        row["subset"] = kind_part
    for k, v in custom.items():
        if k not in row and _scalar(v) is not None:
            row[k] = _scalar(v)
    return row


def _session(row: dict) -> str:
    """Our export's session, else: one utterance per recording (LibriSpeech, MLS, Common
    Voice) → the chapter/book of a ``SPK-CHAPTER-UTT`` id, else the speaker; else the
    recording."""
    if row["recording_id"] == row["segment_id"]:
        m = _BOOK_UTT.match(row["segment_id"])
        if m:
            return m.group(1)
        if row.get("speaker"):
            return row["speaker"]
    return row["recording_id"]


def import_lhotse(src: str | os.PathLike, **_ignored) -> pl.DataFrame:
    """A segments manifest from a Lhotse CutSet / SupervisionSet file or folder."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    rows: dict[str, dict] = {}
    skipped: dict[str, int] = {}
    dups = 0
    for path, rec_path, kind in _sources(Path(src)):
        m = _load(path)
        part = _part(path.name, kind)
        if isinstance(m, RecordingSet):
            raise ManifestError(f"{path} is a RecordingSet: give the supervisions (or cuts) to import")
        if isinstance(m, SupervisionSet):
            if rec_path is None:
                raise ManifestError(f"{path}: no recordings manifest next to it "
                                    f"({path.name.replace('supervisions', 'recordings')})")
            recs = _load(rec_path)
            if not isinstance(recs, RecordingSet):
                raise ManifestError(f"{rec_path} is not a RecordingSet")
            by_id = {r.id: r for r in recs}
            items = ((s, s.start, by_id.get(s.recording_id)) for s in m)
        else:
            assert isinstance(m, CutSet)
            items = _cut_supervisions(m, skipped)
        for sup, start, recording in items:
            p = _file_source(recording, skipped)
            if p is None:
                continue
            if sup.id in rows:
                dups += 1
                continue
            rows[sup.id] = _row(sup, start, p, part)
    if dups:
        log.info("lhotse: %d supervisions met more than once (overlapping cuts) were kept once", dups)
    if skipped:
        log.warning("lhotse: skipped %s", ", ".join(f"{n} ({why})" for why, n in sorted(skipped.items())))
    if not rows:
        return conform(pl.DataFrame(schema=SEGMENTS_SCHEMA), SEGMENTS_SCHEMA)
    for r in rows.values():
        if r["session"] is None:
            r["session"] = _session(r)
    df = pl.DataFrame(list(rows.values()), infer_schema_length=None)
    empty = [c for c in df.columns if c not in SEGMENTS_SCHEMA and df[c].null_count() == df.height]
    return conform(df.drop(empty), SEGMENTS_SCHEMA).sort("segment_id")


def _cut_supervisions(cuts, skipped: dict):
    """``(supervision, absolute start, recording)`` of every single-recording cut."""
    for cut in cuts:
        recording = getattr(cut, "recording", None)
        if not getattr(cut, "has_recording", False) or recording is None:
            skipped[f"{type(cut).__name__} without one recording"] = \
                skipped.get(f"{type(cut).__name__} without one recording", 0) + 1
            continue
        for sup in cut.supervisions:
            yield sup, cut.start + sup.start, recording


__all__ = ["CUTS_FILE", "RECORDINGS_FILE", "SUPERVISIONS_FILE", "build_lhotse", "export_lhotse",
           "import_lhotse"]
