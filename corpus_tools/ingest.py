"""Archive ingest (thesis §6.2.3): probe every file, apply metadata filters.

:func:`run_ingest` is the stage: it takes :class:`IngestArgs` and writes
``recordings.parquet``; ``corpus ingest`` only parses options into those args and prints the
:class:`IngestResult`. Every other function here is pure over rows except
:func:`probe_file` (which runs ffprobe/ffmpeg) and :class:`ProbeCache` (which makes a long
ingest resumable: every finished probe is appended to a journal, so a crash or ``kill -9``
loses at most the files in flight).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable

import polars as pl
import yaml

from corpus_tools.audio import AudioError, check_decodes, probe
from corpus_tools.manifests import RECORDINGS_SCHEMA, ManifestError, WorkDir, write_recordings
from corpus_tools.parallel.ray_utils import ray_map
from corpus_tools.progress import progress_bar

MAX_DURATION_S = 3 * 3600.0
DEFAULT_GENRE_FILTER = Path(__file__).resolve().parents[1] / "manifests" / "genre_filter.yaml"
# Sidecar files that commonly sit next to broadcast media; they are not media and are not
# given a row (they are counted in the summary instead).
SIDECAR_EXT = {".csv", ".tsv", ".json", ".jsonl", ".txt", ".md", ".xml", ".parquet", ".rttm",
               ".stm", ".srt", ".vtt", ".yaml", ".yml", ".nfo", ".pdf", ".jpg", ".jpeg", ".png"}


# -- discovery --------------------------------------------------------------------------


def discover(sources: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders (recursively) into sorted media candidates and sidecars."""
    media, sidecars = set(), set()
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        for f in files:
            if any(part.startswith(".") for part in f.relative_to(p if p.is_dir() else p.parent).parts):
                continue
            (sidecars if f.suffix.lower() in SIDECAR_EXT else media).add(f.resolve())
    return sorted(media), sorted(sidecars)


# -- probing with a resumable journal ---------------------------------------------------


def probe_file(path: Path, verify_decode: bool = True) -> dict:
    """Probe one file; never raises for bad media (the reason goes into the row)."""
    row: dict = {"path": str(path), "status": "ok", "reason": None}
    try:
        row["size_bytes"] = path.stat().st_size
    except OSError as exc:
        return {**row, "status": "failed", "reason": f"cannot stat: {exc.strerror}"}
    try:
        info = probe(path)
        row.update(duration=info.duration, sample_rate=info.sample_rate, channels=info.channels,
                   codec=info.codec, container=info.container)
        if verify_decode:
            check_decodes(path, info.duration)
    except AudioError as exc:
        row.update(status="failed", reason=str(exc))
    except Exception as exc:  # a probe must never take the whole ingest down
        row.update(status="failed", reason=f"probe error: {type(exc).__name__}: {exc}")
    return row


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class ProbeCache:
    """Append-only JSONL journal of finished probes, keyed by path, size and mtime."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict] = {}
        if path.exists():
            for line in self._complete_lines().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.done[rec["key"]] = rec["row"]

    def _complete_lines(self) -> str:
        """The journal up to its last newline. A killed run can leave a torn last line; it is
        cut from the file, so the next append starts on a line of its own."""
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            try:
                with open(self.path, "rb+") as fh:
                    fh.truncate(end)
            except OSError:
                pass  # read-only work dir: reading still works, the write path reports it
        return data[:end].decode("utf-8")

    def get(self, path: Path, verify_decode: bool) -> dict | None:
        try:
            row = self.done.get(_file_key(path))
        except OSError:
            return None
        if row is None or (verify_decode and not row.get("_verified", False)):
            return None
        return row

    def put(self, path: Path, row: dict, verify_decode: bool) -> None:
        try:
            key = _file_key(path)
        except OSError:
            return
        row = {**row, "_verified": verify_decode}
        self.done[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "row": row}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


# -- metadata ---------------------------------------------------------------------------

META_COLUMNS = ("id", "title", "summary", "genre", "date", "meta_duration")
_ALIASES = {
    "publication_date": "date", "pub_date": "date", "broadcast_date": "date",
    "duration": "meta_duration", "file": "file", "filename": "file", "path": "file",
    "description": "summary",
}


def read_metadata(path: str | os.PathLike) -> pl.DataFrame:
    """Read a CSV/TSV/Parquet metadata table; normalise column names; require ``id``."""
    p = Path(path)
    if not p.exists():
        raise ManifestError(f"metadata file not found: {p}")
    try:
        if p.suffix.lower() == ".parquet":
            df = pl.read_parquet(p)
        else:
            df = pl.read_csv(p, separator="\t" if p.suffix.lower() == ".tsv" else ",",
                             infer_schema_length=0)  # everything as text: ids like 0012 stay ids
    except Exception as exc:
        raise ManifestError(f"cannot read metadata {p}: {exc}") from exc
    df = df.rename({c: _ALIASES.get(c.strip().lower(), c.strip().lower()) for c in df.columns})
    if "id" not in df.columns:
        raise ManifestError(f"metadata {p} needs an 'id' column (has: {', '.join(df.columns)})")
    df = df.with_columns(pl.col("id").cast(pl.String))
    for c in ("title", "summary", "genre", "date", "file"):
        if c in df.columns:
            df = df.with_columns(pl.col(c).cast(pl.String))
    if "meta_duration" in df.columns:
        df = df.with_columns(pl.col("meta_duration").cast(pl.Float64, strict=False))
    dup = df.filter(pl.col("id").is_duplicated())["id"].unique().to_list()
    if dup:
        raise ManifestError(f"metadata ids are not unique: {dup[:5]}")
    return df


def match_metadata(files: list[Path], meta: pl.DataFrame | None) -> tuple[list[dict | None], int]:
    """For each file, its metadata row (by ``file`` column, file name, or stem == id)."""
    if meta is None:
        return [None] * len(files), 0
    rows = meta.to_dicts()
    by_key: dict[str, dict] = {}
    for r in rows:
        by_key.setdefault(r["id"], r)
        if r.get("file"):
            by_key[str(r["file"])] = r
            by_key[Path(str(r["file"])).name] = r
    out, used = [], set()
    for f in files:
        r = by_key.get(str(f)) or by_key.get(f.name) or by_key.get(f.stem)
        out.append(r)
        if r is not None:
            used.add(r["id"])
    return out, len(rows) - len(used)


# -- filters (pure) ---------------------------------------------------------------------


@dataclass
class GenreFilter:
    mode: str = "deny"
    drop: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GenreFilter":
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
        mode = str(cfg.get("mode", "deny")).lower()
        if mode not in ("deny", "allow"):
            raise ManifestError(f"{path}: mode must be 'deny' or 'allow', not {mode!r}")
        return cls(mode, [str(g) for g in cfg.get("drop") or []], [str(g) for g in cfg.get("keep") or []])

    @staticmethod
    def _matches(genre: str, entries: list[str]) -> str | None:
        g = " ".join(genre.lower().split())
        for e in entries:
            e2 = " ".join(e.lower().split())
            if g == e2 or re.search(rf"(^|\W){re.escape(e2)}($|\W)", g):
                return e
        return None

    def reason(self, genre: str | None) -> str | None:
        """Why a broadcast of ``genre`` is filtered, or None to keep it."""
        if genre is None or not str(genre).strip():
            return "genre missing (allow-list mode)" if self.mode == "allow" else None
        hit = self._matches(str(genre), self.drop)
        if hit is not None:
            return f"genre dropped: {genre} (matches '{hit}')"
        if self.mode == "allow" and self._matches(str(genre), self.keep) is None:
            return f"genre not in keep list: {genre}"
        return None


def apply_filters(df: pl.DataFrame, genre_filter: GenreFilter | None,
                  max_duration: float = MAX_DURATION_S, dedupe: bool = True) -> pl.DataFrame:
    """Mark ok rows as ``filtered`` by genre, duration and consecutive-duplicate rules.

    The duplicate rule follows the thesis: order broadcasts by publication date (then
    id), and drop a broadcast whose title, summary and date equal those of the previous
    one — a re-run or a split upload of the same programme. An unknown (missing or empty)
    date is never equal to another one: two undated broadcasts of one series are both kept.
    """
    rows = df.to_dicts()
    for r in rows:
        if r["status"] != "ok":
            continue
        meta_dur, dur = r.get("meta_duration"), r.get("duration")
        if meta_dur and dur is not None and dur < float(meta_dur) * 0.98 - 1.0:
            # an mp3 without a Xing header cut mid-stream decodes cleanly; the catalogue
            # duration is then the only witness of the missing part
            r.update(status="failed", reason=f"truncated: {dur:.1f} s of audio, metadata says {float(meta_dur):.1f} s")
            continue
        if genre_filter is not None and "genre" in r:
            why = genre_filter.reason(r.get("genre"))
            if why:
                r.update(status="filtered", reason=why)
                continue
        dur = r.get("duration")
        if dur is not None and dur > max_duration:
            r.update(status="filtered", reason=f"longer than {max_duration / 3600:g} h ({dur / 3600:.2f} h)")
    if dedupe and all(c in df.columns for c in ("title", "date")):
        def date_of(r: dict) -> str:
            return str(r.get("date") or "").strip()

        order = sorted(range(len(rows)), key=lambda i: (date_of(rows[i]), rows[i]["recording_id"]))
        prev = None
        for i in order:
            r = rows[i]
            if r["status"] != "ok":
                continue
            sig = (r.get("title"), r.get("summary"), date_of(r))
            if prev is not None and r.get("title") and sig[2] and sig == prev[0]:
                r.update(status="filtered", reason=f"duplicate of {prev[1]} (same title, summary, date)")
                continue
            prev = (sig, r["recording_id"])
    schema = {k: (pl.String if k in ("status", "reason") else v) for k, v in df.schema.items()}
    return pl.DataFrame(rows, schema=schema)


def assign_ids(files: list[Path], meta_rows: list[dict | None]) -> list[str]:
    """Metadata id when known, else the file stem; collisions get a short path hash."""
    ids = [(m["id"] if m else f.stem) for f, m in zip(files, meta_rows)]
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    out = []
    for f, i in zip(files, ids):
        if seen[i] > 1:
            i = f"{i}-{hashlib.sha1(str(f).encode()).hexdigest()[:8]}"
        out.append(i)
    return out


def build_recordings(files: list[Path], probes: list[dict], meta_rows: list[dict | None]) -> pl.DataFrame:
    ids = assign_ids(files, meta_rows)
    rows = []
    for rid, pr, m in zip(ids, probes, meta_rows):
        row = {k: None for k in RECORDINGS_SCHEMA}
        row.update({k: v for k, v in pr.items() if not k.startswith("_")})
        row["recording_id"] = rid
        if m is not None:
            for k, v in m.items():
                if k not in ("id", "file"):
                    row[k] = v
        rows.append(row)
    extra_cols = sorted({k for r in rows for k in r} - set(RECORDINGS_SCHEMA))
    schema = dict(RECORDINGS_SCHEMA)
    for c in extra_cols:
        schema[c] = pl.Float64 if c == "meta_duration" else pl.String
    norm = [{k: (r.get(k) if k in RECORDINGS_SCHEMA or r.get(k) is None or schema[k] != pl.String
                 else str(r.get(k))) for k in schema} for r in rows]
    return pl.DataFrame(norm, schema=schema)


def summarize(df: pl.DataFrame) -> pl.DataFrame:
    """Counts and hours per status (and per reason for failed/filtered)."""
    return (df.with_columns(pl.col("duration").fill_null(0.0))
              .group_by("status")
              .agg(pl.len().alias("files"), (pl.col("duration").sum() / 3600).alias("hours"))
              .sort("status"))


# -- the stage --------------------------------------------------------------------------


class Backend(str, Enum):
    """Where the per-item work of a stage runs."""

    local = "local"
    ray = "ray"


@dataclass
class IngestArgs:
    """What ``corpus ingest`` takes (its options have the same names and defaults)."""

    sources: list[Path]
    out: Path
    metadata: Path | None = None
    genre_filter: Path | None = None  # default DEFAULT_GENRE_FILTER, used with metadata or genre lists
    keep_genre: list[str] = field(default_factory=list)
    drop_genre: list[str] = field(default_factory=list)
    max_hours: float = MAX_DURATION_S / 3600
    dedupe: bool = True
    verify_decode: bool = True
    workers: int = 2
    backend: str = Backend.local.value
    ray_address: str | None = None


@dataclass
class IngestResult:
    recordings: pl.DataFrame  # one row per input file, as written
    path: Path  # the recordings manifest
    files: int
    sidecars: int  # files skipped as sidecars (csv, txt, json, ...)
    unmatched: int  # metadata rows that matched no file


def run_ingest(args: IngestArgs) -> IngestResult:
    """Probe every media file of ``args.sources``, filter by metadata, write recordings.parquet.

    Every input file gets a row with status ok, failed (with the reason) or filtered; bad
    files never stop the run. Probes already in the journal are not repeated.
    """
    if args.backend not in tuple(Backend):
        raise ValueError(f"--backend must be local or ray, not {args.backend!r}")
    files, sidecars = discover(args.sources)
    if not files:
        raise ValueError(f"no media files found in {', '.join(map(str, args.sources))}")
    meta = read_metadata(args.metadata) if args.metadata else None
    meta_rows, unmatched = match_metadata(files, meta)
    gf = None
    if meta is not None or args.keep_genre or args.drop_genre:
        gf = GenreFilter.load(args.genre_filter or DEFAULT_GENRE_FILTER)
        if args.keep_genre:
            gf.mode, gf.keep = "allow", list(args.keep_genre)
        if args.drop_genre:
            gf.drop = gf.drop + list(args.drop_genre)
    wd = WorkDir(args.out)
    wd.root.mkdir(parents=True, exist_ok=True)
    probes = _probe_all(files, ProbeCache(wd.cache_dir("ingest") / "probes.jsonl"), args)
    df = build_recordings(files, probes, meta_rows)
    df = apply_filters(df, gf, max_duration=args.max_hours * 3600, dedupe=args.dedupe)
    write_recordings(df, wd.recordings)
    return IngestResult(df, wd.recordings, len(files), len(sidecars), unmatched)


def _probe_all(files: list[Path], cache: ProbeCache, args: IngestArgs) -> list[dict]:
    """Each file's probe: from the journal, else probed (threads or Ray tasks) and journalled
    as it arrives, in input order."""
    probes: list[dict | None] = [cache.get(f, args.verify_decode) for f in files]
    todo = [i for i, p in enumerate(probes) if p is None]
    with progress_bar() as bar, ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        task = bar.add_task("probe", total=len(files), completed=len(files) - len(todo), info="")
        if args.backend == Backend.ray:
            results = ray_map(probe_file, [files[i] for i in todo], address=args.ray_address,
                              kwargs={"verify_decode": args.verify_decode})
        else:
            results = pool.map(lambda j: probe_file(files[j], args.verify_decode), todo)
        for i, row in zip(todo, results):
            cache.put(files[i], row, args.verify_decode)
            probes[i] = row
            bar.advance(task)
    return probes
