"""Manifests: the Parquet tables every stage reads and writes.

There are two kinds of table (documented for users in ``docs/manifests.md``):

``recordings``
    one row per input media file, whatever happened to it.
``segments``
    one row per utterance: a time range of a recording plus its text and speaker.

Both are plain polars DataFrames with a fixed set of required columns (below) and
free extra columns (archive metadata, per-stage details). Writes are atomic: a table is
written to a temporary file in the same folder and renamed, so a reader never sees half
a manifest, and a crash leaves the previous version intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl

# -- recordings -------------------------------------------------------------------------

RECORDING_STATUS = ("ok", "failed", "filtered")

RECORDINGS_SCHEMA: dict[str, pl.DataType] = {
    "recording_id": pl.String,  # stable id: metadata id, else the file stem (made unique)
    "path": pl.String,  # absolute path of the media file
    "status": pl.String,  # ok | failed | filtered
    "reason": pl.String,  # why failed/filtered; null when ok
    "duration": pl.Float64,  # seconds of the first audio stream (null if unknown)
    "sample_rate": pl.Int64,  # native sample rate of that stream
    "channels": pl.Int64,
    "codec": pl.String,  # ffprobe codec_name of the audio stream
    "container": pl.String,  # ffprobe format_name
    "size_bytes": pl.Int64,
}

# -- segments ---------------------------------------------------------------------------

SEGMENTS_SCHEMA: dict[str, pl.DataType] = {
    "segment_id": pl.String,  # unique within a manifest; used as the shard key
    "recording_id": pl.String,
    "path": pl.String,  # the media file the segment is cut from
    "start": pl.Float64,  # seconds from the start of the file
    "end": pl.Float64,
    "duration": pl.Float64,  # end - start
    "text": pl.String,  # transcript ("" when the method has none)
    "speaker": pl.String,  # speaker label (null when unknown)
    "method": pl.String,  # segmentation method or importer name
    "language": pl.String,
    "session": pl.String,  # recording session (LibriSpeech chapter; broadcast recording)
}


class ManifestError(ValueError):
    """A manifest is missing, unreadable or lacks required columns."""


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Add missing required columns as nulls, cast them, and put them first."""
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [c for c in df.columns if c not in schema]
    return df.select(cols + [pl.col(c) for c in extra])


def validate(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ManifestError(f"{what} manifest lacks required columns: {', '.join(missing)}")
    return conform(df, schema)


def write_parquet_atomic(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; manifests are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: str | os.PathLike, schema: dict[str, pl.DataType] | None = None,
                  what: str = "segments") -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{what} manifest not found: {path}")
    try:
        if path.suffix in (".csv", ".tsv"):
            df = pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",")
        else:
            df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types for corrupt files
        raise ManifestError(f"cannot read {what} manifest {path}: {exc}") from exc
    return validate(df, schema, what) if schema is not None else df


def write_recordings(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    return write_parquet_atomic(validate(df, RECORDINGS_SCHEMA, "recordings"), path)


def read_recordings(path: str | os.PathLike) -> pl.DataFrame:
    return read_manifest(path, RECORDINGS_SCHEMA, "recordings")


def write_segments(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    return write_parquet_atomic(validate(df, SEGMENTS_SCHEMA, "segments"), path)


def read_segments(path: str | os.PathLike) -> pl.DataFrame:
    return read_manifest(path, SEGMENTS_SCHEMA, "segments")


def scan_segments(path: str | os.PathLike) -> pl.LazyFrame:
    """A Parquet segments manifest as a lazy scan of its required columns, cast to the schema:
    what :func:`read_segments` gives, for queries that stream its row groups instead of
    loading it (``ManifestError`` if it is missing, unreadable or lacks a required column)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"segments manifest not found: {path}")
    try:
        columns = pl.read_parquet_schema(path)
    except Exception as exc:  # polars raises several error types for corrupt files
        raise ManifestError(f"cannot read segments manifest {path}: {exc}") from exc
    missing = [c for c in SEGMENTS_SCHEMA if c not in columns]
    if missing:
        raise ManifestError(f"segments manifest lacks required columns: {', '.join(missing)}")
    return pl.scan_parquet(path).select([pl.col(c).cast(t) for c, t in SEGMENTS_SCHEMA.items()])


# -- work-directory layout --------------------------------------------------------------


class WorkDir:
    """Where each stage keeps its files inside a work directory.

    ``recordings.parquet``            ingest output
    ``segments/{method}.parquet``     one segments manifest per segmentation method
    ``segments/rttm/{rec}.rttm``      diarization turns per recording (wx-diar)
    ``segments/ctm/{rec}.ctm``        word alignment per recording (wx-align)
    ``cache/{backend}/{rec}.json``    per-recording model outputs (resume + reuse across methods)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.recordings = self.root / "recordings.parquet"
        self.segments_dir = self.root / "segments"
        self.rttm_dir = self.segments_dir / "rttm"
        self.ctm_dir = self.segments_dir / "ctm"

    def segments(self, method: str) -> Path:
        return self.segments_dir / f"{method}.parquet"

    def cache_dir(self, backend: str) -> Path:
        return self.root / "cache" / backend

    def methods_present(self) -> list[str]:
        if not self.segments_dir.exists():
            return []
        return sorted(p.stem for p in self.segments_dir.glob("*.parquet"))


def resolve_segments_source(src: str | os.PathLike, method: str | None) -> Path:
    """A segments manifest given either directly or as WORKDIR + method."""
    p = Path(src)
    if p.is_file():
        return p
    if p.is_dir():
        wd = WorkDir(p)
        if method:
            path = wd.segments(method)
            if not path.exists():
                present = ", ".join(wd.methods_present()) or "none"
                raise ManifestError(
                    f"no segments for method {method!r} in {p} (present: {present}); "
                    f"run `corpus segment {p} --method {method}` first")
            return path
        present = wd.methods_present()
        if len(present) == 1:
            return wd.segments(present[0])
        if (p / "segments.parquet").exists():
            return p / "segments.parquet"
        raise ManifestError(
            f"{p} holds segments for {present or 'no method'}; choose one with --method")
    raise ManifestError(f"no such manifest or work directory: {p}")
