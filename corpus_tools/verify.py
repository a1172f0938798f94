"""``corpus verify``: check a work directory or a shard directory for consistency.

A work directory is checked on its own (recordings and segments manifests, stage caches,
leftovers of killed runs) and, with ``shards=``, against a shard directory. A shard
directory is checked shard by shard: the index's size and sha256 of every tar, every tar
readable to the end (and ending in its end-of-archive marker), every utterance a ``.json`` +
``.wav``/``.flac`` pair whose json holds every required key and whose audio decodes, is not
empty, holds finite samples and is 16 kHz mono with the json's frame count, per-shard
counts, frames and hours equal to the index, keys unique and equal to the
``_shard_distribution.csv`` plan. Given the segments manifest the shards were written from,
the utterance ids, counts and hours must equal the manifest's; given recordings, every
utterance must lie inside its (ok) recording.

Problems are mismatches (the command exits non-zero); warnings are harmless leftovers
(temp files of killed runs, damaged cache entries that a rerun recomputes).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from corpus_tools import shards as sh
from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.data.members import AUDIO_EXTENSIONS, audio_problem, decode_into, member_info
from corpus_tools.data.tar_index import ends_cleanly
from corpus_tools.manifests import (RECORDINGS_SCHEMA, ManifestError, WorkDir, read_manifest, scan_segments,
                                    validate)

# keys the shard stream and nanow2v2 both rely on
REQUIRED_JSON_KEYS = (
    "id", "sample_id", "key", "num_frames", "sample_rate", "duration", "transcript",
    "transcription", "speaker", "speaker_id", "recording", "recording_id", "session",
    "language", "language_tag", "method", "start", "end",
)
TIME_TOLERANCE_S = 0.01  # segments may end this much past the probed recording duration


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """The outcome of a verification: named checks, problems and warnings."""

    target: str
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, name: str, problems: list[str], detail: str = "") -> bool:
        """Record one check: passes when ``problems`` is empty (they are kept, prefixed)."""
        self.checks.append(Check(name, not problems, detail if not problems else
                                 f"{len(problems)} problem(s): {problems[0]}"))
        self.problems.extend(f"{name}: {p}" for p in problems)
        return not problems

    def merge(self, other: "Report") -> None:
        self.checks.extend(other.checks)
        self.problems.extend(other.problems)
        self.warnings.extend(other.warnings)
        self.totals.update(other.totals)


def is_shard_dir(path: Path) -> bool:
    return (path / "shards.parquet").is_file() or (path / ".state" / "plan.json").is_file()


def is_workdir(path: Path) -> bool:
    return (path / "recordings.parquet").is_file()


# -- shards ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _audio_check(data: bytes):
    """(header, None), or (header or None, why the stream would skip the member): empty, not
    decodable, or float samples that are not finite (only float samples are decoded: PCM and
    FLAC cannot hold NaN). The reason is the stream's, without its leading "audio"."""
    if not data:
        return None, "is empty"
    try:
        info = member_info(data)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, they do not decode
        return None, audio_problem(exc).removeprefix("audio ")
    if info.frames == 0:
        return info, "is empty (no samples)"
    if info.subtype in ("FLOAT", "DOUBLE") and info.samplerate == SAMPLE_RATE:
        _, problem = decode_into(data, np.empty(info.frames, dtype=np.float32))
        if problem is not None:
            return info, problem.removeprefix("audio ")
    return info, None


def read_shard(path: Path) -> tuple[list[dict], list[str]]:
    """Read one tar to the end: ``[{key, meta, frames, ext}]`` per utterance and problems."""
    problems: list[str] = []
    utts: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r|") as tf:  # streaming: a shard is read once, in order
            for ti in tf:
                if not ti.isfile():
                    problems.append(f"{path.name}: unexpected member {ti.name} (not a file)")
                    continue
                base = ti.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                data = tf.extractfile(ti).read()
                u = utts.get(key)
                if u is None:
                    u = utts[key] = {"key": key, "meta": None, "frames": None, "ext": None}
                    order.append(key)
                if ext == "json":
                    if u["meta"] is not None:
                        problems.append(f"{path.name}: {key}.json occurs twice")
                    try:
                        u["meta"] = json.loads(data)
                    except ValueError:
                        problems.append(f"{path.name}: {key}.json is not valid JSON")
                        u["meta"] = {}
                elif ext in AUDIO_EXTENSIONS:
                    if u["ext"] is not None:
                        problems.append(f"{path.name}: {key} has two audio members")
                    u["ext"] = ext
                    info, damage = _audio_check(data)
                    if damage is not None:
                        problems.append(f"{path.name}: {key}.{ext} {damage}")
                        continue
                    if info.samplerate != SAMPLE_RATE or info.channels != 1:
                        problems.append(f"{path.name}: {key}.{ext} is {info.samplerate} Hz × "
                                        f"{info.channels} ch, not 16 kHz mono")
                    u["frames"] = info.frames
                else:
                    problems.append(f"{path.name}: unexpected member {ti.name}")
            end_offset = tf.offset
        with open(path, "rb") as fh:  # tarfile stops quietly at a cut between members
            if not ends_cleanly(fh, end_offset, path.stat().st_size):
                problems.append(f"{path.name}: truncated: no end-of-archive marker after its last member")
    except (tarfile.TarError, OSError, EOFError) as exc:
        where = f"after {order[-1]}" if order else "from its start"
        problems.append(f"{path.name}: not a readable tar: truncated or damaged {where} ({exc})")
    return [utts[k] for k in order], problems


def verify_shard_dir(shard_dir: str | Path, *, segments: pl.DataFrame | None = None,
                     recordings: pl.DataFrame | None = None) -> Report:
    """Check a ``corpus shard`` output directory (see the module docstring)."""
    d = Path(shard_dir)
    rep = Report(str(d))
    index_path = d / sh.INDEX_NAME
    plan = None
    try:
        plan = json.loads((d / sh.STATE_DIR / "plan.json").read_text())
    except (OSError, ValueError):
        pass
    if not index_path.is_file():
        done = sum(1 for n in (plan or {}).get("shards", []) if (d / n).is_file())
        total = len((plan or {}).get("shards", []))
        rep.check("index", [f"{sh.INDEX_NAME} missing: the directory is incomplete ({done} of "
                            f"{total} planned shards present); rerun `corpus shard` (or `corpus merge "
                            f"{d}` once every part has finished)"])
        return rep
    try:
        index = pl.read_parquet(index_path)
    except Exception as exc:
        rep.check("index", [f"cannot read {index_path}: {exc}"])
        return rep
    missing_cols = [c for c in sh.INDEX_SCHEMA if c not in index.columns]
    if not rep.check("index", [f"lacks columns {missing_cols}"] if missing_cols else [],
                     f"{index.height} shards"):
        return rep
    if plan is not None:
        rep.check("plan", [] if index["name"].to_list() == plan.get("shards") else
                  [f"index lists {index.height} shards, the plan {len(plan.get('shards', []))}"],
                  "index names = planned shards")
    stray = sorted({p.name for p in d.glob("*.tar")} - set(index["name"].to_list()))
    if stray:
        rep.warnings.append(f"{len(stray)} tar file(s) not in the index, e.g. {stray[0]}")
    tmp = sorted(p.name for p in d.glob(".*.tmp")) + sorted(p.name for p in (d / sh.STATE_DIR).glob(".*.tmp"))
    if tmp:
        rep.warnings.append(f"{len(tmp)} temp file(s) left by an interrupted run, e.g. {tmp[0]}")

    file_problems, tar_problems, json_problems, count_problems = [], [], [], []
    all_utts: list[tuple[str, dict]] = []
    for row in index.iter_rows(named=True):
        p = d / row["name"]
        if not p.is_file():
            file_problems.append(f"{row['name']}: missing")
            continue
        if p.stat().st_size != row["bytes"]:
            file_problems.append(f"{row['name']}: {p.stat().st_size} bytes, index says {row['bytes']}")
        if _sha256(p) != row["sha256"]:
            file_problems.append(f"{row['name']}: sha256 differs from the index")
        utts, probs = read_shard(p)
        tar_problems.extend(probs)
        frames, seconds = 0, 0.0
        for u in utts:
            meta = u["meta"]
            if meta is None:
                json_problems.append(f"{row['name']}: {u['key']} has no .json")
                continue
            if u["ext"] is None:
                json_problems.append(f"{row['name']}: {u['key']} has no audio member")
            lacking = [k for k in REQUIRED_JSON_KEYS if k not in meta]
            if lacking:
                json_problems.append(f"{row['name']}: {u['key']}.json lacks {', '.join(lacking)}")
            if meta.get("key", u["key"]) != u["key"]:
                json_problems.append(f"{row['name']}: {u['key']}.json says key {meta.get('key')}")
            if u["frames"] is not None and meta.get("num_frames") != u["frames"]:
                json_problems.append(f"{row['name']}: {u['key']} has {u['frames']} frames, its json "
                                     f"says {meta.get('num_frames')}")
            n = int(meta.get("num_frames") or 0)
            frames += n
            seconds += float(meta.get("duration", n / SAMPLE_RATE))
            all_utts.append((row["name"], meta))
        if len(utts) != row["count"]:
            count_problems.append(f"{row['name']}: {len(utts)} utterances, index says {row['count']}")
        if frames != row["num_frames"]:
            count_problems.append(f"{row['name']}: {frames} frames, index says {row['num_frames']}")
        if not math.isclose(seconds / 3600.0, row["hours"], rel_tol=1e-9, abs_tol=1e-12):
            count_problems.append(f"{row['name']}: {seconds / 3600:.6f} h, index says {row['hours']:.6f} h")
    n_utts = len(all_utts)
    hours = sum(float(m.get("duration") or 0.0) for _, m in all_utts) / 3600.0
    rep.check("files", file_problems, "every shard present, size and sha256 as indexed")
    rep.check("tar", tar_problems, "every tar reads to the end; members are json + wav/flac pairs")
    rep.check("json", json_problems, f"every json has the {len(REQUIRED_JSON_KEYS)} required keys; "
                                     "audio 16 kHz mono with num_frames frames")
    rep.check("counts", count_problems, f"{n_utts} utterances, {hours:.4f} h as indexed")
    dup = sorted(k for k, c in Counter(m.get("key") for _, m in all_utts).items() if c > 1)
    rep.check("keys", [f"key {k} occurs in several shards" for k in dup[:5]], "keys unique across shards")
    dist = d / sh.DISTRIBUTION_NAME
    if dist.is_file():
        try:
            plan_df = pl.read_csv(dist)
            want = sorted(zip(plan_df["key"].cast(pl.String).to_list(), plan_df["shard"].to_list()))
        except Exception as exc:
            want, got = None, None
            rep.check("distribution", [f"cannot read {dist.name}: {exc}"])
        if want is not None:
            got = sorted((str(m.get("key")), name) for name, m in all_utts)
            rep.check("distribution", [] if want == got else
                      [f"{dist.name} plans {len(want)} utterances, the shards hold {len(got)} "
                       f"({len(set(want) - set(got))} missing, {len(set(got) - set(want))} unplanned)"],
                      f"{dist.name} matches the shards")
    rep.totals.update(shards=index.height, utterances=n_utts, shard_hours=hours,
                      shard_bytes=int(index["bytes"].sum()) if index.height else 0)
    if segments is not None:
        rep.merge(_shards_vs_segments(all_utts, segments))
    if recordings is not None:
        rep.merge(_inside_recordings([m for _, m in all_utts], recordings, "shard segments"))
    return rep


def _shards_vs_segments(all_utts: list[tuple[str, dict]], segments: pl.DataFrame) -> Report:
    """The shards hold exactly the manifest's segments (ids, times, hours)."""
    rep = Report("")
    seg = segments.with_columns(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start"))
                                .alias("duration"))
    seg = seg.filter((pl.col("duration") * SAMPLE_RATE).round() > 0)  # the writer skips empty ones
    want = {r["segment_id"]: r for r in seg.select("segment_id", "start", "end", "duration")
            .iter_rows(named=True)}
    got = {m.get("id"): m for _, m in all_utts}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    probs = []
    if missing:
        probs.append(f"{len(missing)} manifest segment(s) not in the shards, e.g. {missing[0]}")
    if extra:
        probs.append(f"{len(extra)} shard utterance(s) not in the manifest, e.g. {extra[0]}")
    for sid in sorted(set(want) & set(got)):
        w, g = want[sid], got[sid]
        if (abs(float(g.get("start") or 0) - float(w["start"])) > 1e-6
                or abs(float(g.get("duration") or 0) - float(w["duration"])) > 1e-6):
            probs.append(f"{sid}: times differ from the manifest")
            break
    want_h = float(seg["duration"].sum()) / 3600.0 if seg.height else 0.0
    got_h = sum(float(m.get("duration") or 0.0) for m in got.values()) / 3600.0
    if not math.isclose(want_h, got_h, rel_tol=1e-9, abs_tol=1e-9):
        probs.append(f"manifest holds {want_h:.6f} h, the shards {got_h:.6f} h")
    rep.check("manifest", probs, f"{len(want)} segments, {want_h:.4f} h = the shards")
    return rep


def _inside_recordings(rows: list[dict], recordings: pl.DataFrame, what: str,
                       total: int | None = None) -> Report:
    """Every row (segment_id|id, recording_id, start, end) lies inside its ok recording.
    ``total``: how many rows were checked, when ``rows`` holds only the suspects of a
    manifest (:func:`_outside_suspects`)."""
    rep = Report("")
    recs = {r["recording_id"]: r for r in recordings.select("recording_id", "status", "duration")
            .iter_rows(named=True)}
    probs = []
    for r in rows:
        sid = r.get("segment_id") or r.get("id")
        rid = r.get("recording_id")
        rec = recs.get(rid)
        if rec is None:
            probs.append(f"{sid}: recording {rid} is not in recordings.parquet")
            continue
        if rec["status"] != "ok":
            probs.append(f"{sid}: recording {rid} has status {rec['status']}")
            continue
        start, end = r.get("start"), r.get("end")
        if start is None or end is None or not (0.0 <= start < end):
            probs.append(f"{sid}: bad time range {start}–{end}")
        elif rec["duration"] is not None and end > rec["duration"] + TIME_TOLERANCE_S:
            probs.append(f"{sid}: ends at {end:.3f} s, after its recording ({rec['duration']:.3f} s)")
    rep.check(f"inside recordings ({what})", probs,
              f"{len(rows) if total is None else total} segments inside their recordings")
    return rep


# -- work directories ----------------------------------------------------------------------


def verify_workdir(workdir: str | Path, *, methods: list[str] | None = None,
                   shards: str | Path | None = None, workers: int = 0) -> Report:
    """Check a work directory's manifests (and, with ``shards``, a shard directory against
    the segments of ``methods[0]`` or of the only method present).

    A segments manifest is scanned, never loaded whole (:func:`_check_segments`), so the
    check runs in memory that does not grow with the corpus, but for the 64-bit hash of each
    segment id (the uniqueness check; ~100 bytes a segment in all, measured). ``workers``: processes that parse the stage
    caches (0: one per CPU; one for small caches)."""
    wd = WorkDir(workdir)
    rep = Report(str(wd.root))
    try:
        recs = validate(read_manifest(wd.recordings, None, "recordings"), RECORDINGS_SCHEMA, "recordings")
    except ManifestError as exc:
        rep.check("recordings", [str(exc)])
        return rep
    probs = []
    if recs["recording_id"].null_count() or not recs["recording_id"].is_unique().all():
        probs.append("recording_id is null or not unique")
    status, duration = pl.col("status"), pl.col("duration")
    for rows, what in ((~status.is_in(["ok", "failed", "filtered"]), "row(s) with an unknown status"),
                       ((status == "ok") & (duration.is_null() | (duration <= 0)),
                        "ok recording(s) without a duration"),
                       ((status != "ok") & pl.col("reason").is_null(),
                        "failed/filtered recording(s) without a reason")):
        if n := recs.filter(rows).height:
            probs.append(f"{n} {what}")
    ok = recs.filter(pl.col("status") == "ok")
    rep.check("recordings", probs, f"{recs.height} rows, {ok.height} ok "
                                   f"({float(ok['duration'].sum() or 0) / 3600:.3f} h)")
    rep.totals.update(recordings=recs.height, recordings_ok=ok.height)

    present = wd.methods_present()
    checked: set[str] = set()
    for m in methods or present:
        path = wd.segments(m)
        if not path.is_file():
            rep.check(f"segments/{m}", [f"{path} missing (present: {', '.join(present) or 'none'})"])
            continue
        try:
            rep.merge(_check_segments(m, path, recs, wd.segments_dir / f"{m}.drops.json"))
        except ManifestError as exc:
            rep.check(f"segments/{m}", [str(exc)])
            continue
        checked.add(m)
    rep.merge(_check_caches(wd, workers))
    if shards is not None:
        target = methods[0] if methods else (present[0] if len(present) == 1 else None)
        if target is None:
            rep.check("shards", [f"{wd.root} holds segments of {', '.join(present) or 'no method'}: "
                                 f"name the method the shards were written from with --method"])
        elif target in checked:
            segments = scan_segments(wd.segments(target)).select("segment_id", "start", "end", "duration").collect()
            rep.merge(verify_shard_dir(shards, segments=segments, recordings=recs))
    return rep


def _collect(frame: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Run a query on the streaming engine: row groups flow through, nothing is held whole."""
    try:
        return frame.collect(engine="streaming")
    except Exception as exc:  # a footer that reads over damaged row groups
        raise ManifestError(f"cannot read segments manifest {path}: {exc}") from exc


def _check_segments(method: str, path: Path, recs: pl.DataFrame, drops_path: Path) -> Report:
    """The manifest's own checks (unique ids, its method, duration = end - start, the path of
    its recording, hours = drops.json) and that every segment lies inside its recording."""
    rep = Report("")
    name = f"segments/{method}"
    seg = scan_segments(path)
    known = _recordings_by_id(recs)
    joined = seg.join(known, on="recording_id", how="left", nulls_equal=True, maintain_order="left")
    wrong_path = pl.col("_known") & ~pl.col("_rec_path").eq_missing(pl.col("path"))
    summary = _collect(seg.select(
        pl.len().alias("rows"), pl.col("segment_id").null_count().alias("null_ids"),
        (pl.col("method") != method).sum().alias("other"),
        pl.col("method").filter(pl.col("method") != method).first().alias("other_method"),
        ((pl.col("duration") - (pl.col("end") - pl.col("start"))).abs() > 1e-6).sum().alias("bad_dur"),
        pl.col("duration").sum().alias("seconds")), path).row(0, named=True)
    paths = _collect(joined.select(wrong_path.sum().alias("n"),
                                   pl.col("segment_id").filter(wrong_path).first().alias("first")), path)
    probs = []
    dup = _duplicate_id(seg, path)
    if summary["null_ids"] or dup is not None:
        probs.append(f"segment_id null or duplicated (e.g. {dup[0] if dup else 'null'})")
    if summary["other"]:
        probs.append(f"{summary['other']} row(s) with method {summary['other_method']!r}")
    if summary["bad_dur"]:
        probs.append(f"{summary['bad_dur']} row(s) where duration != end - start")
    if paths["n"][0]:
        probs.append(f"{paths['n'][0]} row(s) whose path is not their recording's, e.g. {paths['first'][0]}")
    hours = float(summary["seconds"] or 0.0) / 3600.0 if summary["rows"] else 0.0
    if drops_path.is_file():
        try:
            kept = json.loads(drops_path.read_text())["kept_seconds"]
            if not math.isclose(kept / 3600.0, hours, rel_tol=1e-9, abs_tol=1e-9):
                probs.append(f"{drops_path.name} says {kept / 3600:.6f} h kept, the manifest holds {hours:.6f} h")
        except (OSError, ValueError, KeyError) as exc:
            probs.append(f"cannot read {drops_path.name}: {exc}")
    rep.check(name, probs, f"{summary['rows']} segments, {hours:.4f} h")
    rep.merge(_inside_recordings(_outside_suspects(joined, path), recs, method, total=summary["rows"]))
    rep.totals[f"{method}_segments"] = summary["rows"]
    rep.totals[f"{method}_hours"] = hours
    return rep


def _recordings_by_id(recs: pl.DataFrame) -> pl.LazyFrame:
    """The recordings to join segments with: the last row of an id, as a dict of them keeps
    (the recordings check reports ids that repeat)."""
    return (recs.lazy().unique("recording_id", keep="last", maintain_order=True)
            .select("recording_id", pl.col("status").alias("_status"), pl.col("duration").alias("_rec_duration"),
                    pl.col("path").alias("_rec_path"), pl.lit(True).alias("_known")))


def _outside_suspects(joined: pl.LazyFrame, path: Path) -> list[dict]:
    """The rows that may lie outside their ok recording, in manifest order: every row the
    Python check of :func:`_inside_recordings` could fault (a superset: NaN compares as the
    largest float in polars, so rows with one are suspects too), which then decides."""
    start, end, status, dur = pl.col("start"), pl.col("end"), pl.col("_status"), pl.col("_rec_duration")
    suspect = (status.is_null() | (status != "ok") | start.is_null() | end.is_null() | start.is_nan()
               | end.is_nan() | (start < 0) | (start >= end)
               | (dur.is_not_null() & (dur.is_nan() | (end > dur + TIME_TOLERANCE_S))))
    return _collect(joined.filter(suspect.fill_null(True)).select("segment_id", "recording_id", "start", "end"),
                    path).to_dicts()


def _duplicate_id(seg: pl.LazyFrame, path: Path) -> tuple[str | None] | None:
    """``(id,)``: the first segment id (in manifest order) that occurs twice, or None.

    Only the 64-bit hashes of all ids are held (sorted in numpy); the rows whose hash repeats,
    few unless ids do, are then compared by their ids."""
    hashes = np.sort(_collect(seg.select(pl.col("segment_id").hash(seed=0)), path).to_series().to_numpy())
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if not len(repeated):
        return None
    rows = _collect(seg.select("segment_id", pl.col("segment_id").hash(seed=0).alias("_h"))
                    .filter(pl.col("_h").is_in(pl.Series(repeated, dtype=pl.UInt64))), path)
    dup = rows.filter(pl.col("segment_id").is_duplicated())["segment_id"].head(1).to_list()
    return (dup[0],) if dup else None


def _check_caches(wd, workers: int = 0) -> Report:
    """Stage caches: damaged entries and temp files are warnings (a rerun redoes them).
    Every entry is parsed, as a rerun would parse it; in ``workers`` processes (0: one per
    CPU) when there are many, since parsing the caches is most of what a large check costs."""
    rep = Report("")
    root = wd.root / "cache"
    if not root.is_dir():
        return rep
    entries, tmp = [], []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            tmp.append(p)
        elif p.suffix == ".json":
            entries.append(p)
    n = len(entries)
    damaged = _damaged_entries(entries, workers)
    if damaged:
        rep.warnings.append(f"{len(damaged)} damaged cache entr{'y' if len(damaged) == 1 else 'ies'} "
                            f"(recomputed on the next run), e.g. {damaged[0].relative_to(wd.root)}")
    if tmp:
        rep.warnings.append(f"{len(tmp)} temp file(s) left by an interrupted run, e.g. "
                            f"{tmp[0].relative_to(wd.root)} (safe to delete)")
    rep.checks.append(Check("caches", True, f"{n} cache entries readable" if not damaged else
                            f"{n - len(damaged)} of {n} cache entries readable"))
    return rep


CACHE_CHUNK = 64  # cache entries a worker process parses per task
MIN_ENTRIES_PER_WORKER = 2000  # fewer are parsed here: starting a process costs a second or two


def _damaged_entries(entries: list[Path], workers: int) -> list[Path]:
    """The entries that do not parse as JSON (UTF-8, as ``StageCache.get`` reads them), in order."""
    wanted = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(wanted, len(entries) // MIN_ENTRIES_PER_WORKER)
    if workers <= 1:
        return _unparsable(entries)
    chunks = [entries[i:i + CACHE_CHUNK] for i in range(0, len(entries), CACHE_CHUNK)]
    # spawn: polars threads in this process are not fork-safe
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return [p for bad in pool.map(_unparsable, chunks) for p in bad]


def _unparsable(entries: list[Path]) -> list[Path]:
    bad = []
    for p in entries:
        try:
            json.loads(p.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            bad.append(p)
    return bad
