"""`corpus ingest`: parse options into ``IngestArgs``, run ``run_ingest``, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.table import Table

from corpus_tools.ingest import Backend, IngestArgs, IngestResult, run_ingest, summarize
from corpus_tools.progress import stdout, user_errors

D = IngestArgs  # the defaults live on the args dataclass


def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Media files and/or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Work directory to create or update.")],
    metadata: Annotated[Optional[Path], typer.Option(
        "--metadata", help="CSV/TSV/Parquet with id, title, summary, genre, date[, duration, file]. "
        "Rows match files by `file`, file name, or id == file stem.")] = D.metadata,
    genre_filter: Annotated[Optional[Path], typer.Option(
        "--genre-filter", help="YAML with mode (deny|allow), drop and keep lists. "
        "Default: manifests/genre_filter.yaml (used only when --metadata is given).")] = D.genre_filter,
    keep_genre: Annotated[Optional[list[str]], typer.Option(
        "--keep-genre", help="Keep only these genres (switches to allow mode; repeatable).")] = None,
    drop_genre: Annotated[Optional[list[str]], typer.Option(
        "--drop-genre", help="Also drop these genres (repeatable).")] = None,
    max_hours: Annotated[float, typer.Option(help="Drop broadcasts longer than this.")] = D.max_hours,
    dedupe: Annotated[bool, typer.Option(help="Drop consecutive broadcasts with the same title, summary and date.")] = D.dedupe,
    verify_decode: Annotated[bool, typer.Option(
        help="Decode every file once with ffmpeg to catch truncated/corrupt media.")] = D.verify_decode,
    workers: Annotated[int, typer.Option(help="Files probed in parallel.")] = D.workers,
    backend: Annotated[Backend, typer.Option(help="Where probing runs.")] = Backend(D.backend),
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (backend ray).")] = D.ray_address,
) -> None:
    """Probe every media file, filter by metadata, and write WORKDIR/recordings.parquet.

    Every input file gets a row with status ok, failed (with the reason: empty, truncated,
    not audio, no audio stream, ...) or filtered (genre, > 3 h, duplicate). Bad files never
    stop the run. Finished probes are journalled, so an interrupted ingest resumes.
    """
    args = IngestArgs(sources=sources, out=out, metadata=metadata, genre_filter=genre_filter,
                      keep_genre=list(keep_genre or []), drop_genre=list(drop_genre or []),
                      max_hours=max_hours, dedupe=dedupe, verify_decode=verify_decode, workers=workers,
                      backend=backend.value, ray_address=ray_address)
    with user_errors():
        result = run_ingest(args)
    print_result(result)


def print_result(result: IngestResult) -> None:
    table = Table(title=f"ingest: {result.files} files", title_justify="left")
    for c in ("status", "files", "hours"):
        table.add_column(c, justify="right" if c != "status" else "left")
    for r in summarize(result.recordings).iter_rows(named=True):
        table.add_row(r["status"], str(r["files"]), f"{r['hours']:.2f}")
    stdout.print(table)
    bad = result.recordings.filter(pl.col("status") != "ok").select("recording_id", "status", "reason")
    for r in bad.head(20).iter_rows(named=True):
        stdout.print(f"  {r['status']:8s} {r['recording_id']}: {r['reason']}")
    if bad.height > 20:
        stdout.print(f"  … and {bad.height - 20} more (see {result.path})")
    if result.sidecars:
        stdout.print(f"  skipped {result.sidecars} sidecar file(s) (csv, txt, json, ...)")
    if result.unmatched:
        stdout.print(f"  {result.unmatched} metadata row(s) matched no file")
    stdout.print(f"recordings → {result.path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
