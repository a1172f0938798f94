"""`corpus ingest`: probe an archive, apply metadata filters, write recordings.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_GENRE_FILTER = Path(__file__).resolve().parents[2] / "manifests" / "genre_filter.yaml"


def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Media files and/or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Work directory to create or update.")],
    metadata: Annotated[Optional[Path], typer.Option(
        "--metadata", help="CSV/TSV/Parquet with id, title, summary, genre, date[, duration, file]. "
        "Rows match files by `file`, file name, or id == file stem.")] = None,
    genre_filter: Annotated[Optional[Path], typer.Option(
        "--genre-filter", help="YAML with mode (deny|allow), drop and keep lists. "
        "Default: manifests/genre_filter.yaml (used only when --metadata is given).")] = None,
    keep_genre: Annotated[Optional[list[str]], typer.Option(
        "--keep-genre", help="Keep only these genres (switches to allow mode; repeatable).")] = None,
    drop_genre: Annotated[Optional[list[str]], typer.Option(
        "--drop-genre", help="Also drop these genres (repeatable).")] = None,
    max_hours: Annotated[float, typer.Option(help="Drop broadcasts longer than this.")] = 3.0,
    dedupe: Annotated[bool, typer.Option(help="Drop consecutive broadcasts with the same title, summary and date.")] = True,
    verify_decode: Annotated[bool, typer.Option(
        help="Decode every file once with ffmpeg to catch truncated/corrupt media.")] = True,
    workers: Annotated[int, typer.Option(help="Files probed in parallel.")] = 2,
    backend: Annotated[str, typer.Option(help="local | ray: where probing runs.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (backend ray).")] = None,
) -> None:
    """Probe every media file, filter by metadata, and write WORKDIR/recordings.parquet.

    Every input file gets a row with status ok, failed (with the reason: empty, truncated,
    not audio, no audio stream, ...) or filtered (genre, > 3 h, duplicate). Bad files never
    stop the run. Finished probes are journalled, so an interrupted ingest resumes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rich.table import Table

    from corpus_tools import ingest as ing
    from corpus_tools.manifests import WorkDir, write_recordings
    from corpus_tools.progress import fail, progress_bar, stdout, user_errors

    if backend not in ("local", "ray"):
        raise fail(f"--backend must be local or ray, not {backend!r}")
    with user_errors():
        files, sidecars = ing.discover(sources)
        if not files:
            raise fail(f"no media files found in {', '.join(map(str, sources))}")
        meta = ing.read_metadata(metadata) if metadata else None
        meta_rows, unmatched = ing.match_metadata(files, meta)
        gf = None
        if meta is not None or keep_genre or drop_genre:
            gf = ing.GenreFilter.load(genre_filter or DEFAULT_GENRE_FILTER)
            if keep_genre:
                gf.mode, gf.keep = "allow", list(keep_genre)
            if drop_genre:
                gf.drop = gf.drop + list(drop_genre)
        wd = WorkDir(out)
        wd.root.mkdir(parents=True, exist_ok=True)
        cache = ing.ProbeCache(wd.cache_dir("ingest") / "probes.jsonl")
        probes: list[dict | None] = [cache.get(f, verify_decode) for f in files]
        todo = [i for i, p in enumerate(probes) if p is None]
        with progress_bar() as bar:
            task = bar.add_task("probe", total=len(files), completed=len(files) - len(todo), info="")
            if backend == "ray":
                from corpus_tools.scale import ray_map

                results = ray_map(ing.probe_file, [files[i] for i in todo], address=ray_address,
                                  kwargs={"verify_decode": verify_decode})
                for i, row in zip(todo, results):
                    cache.put(files[i], row, verify_decode)
                    probes[i] = row
                    bar.advance(task)
            else:
                with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                    for i, row in zip(todo, pool.map(lambda j: ing.probe_file(files[j], verify_decode), todo)):
                        cache.put(files[i], row, verify_decode)
                        probes[i] = row
                        bar.advance(task)
        df = ing.build_recordings(files, probes, meta_rows)
        df = ing.apply_filters(df, gf, max_duration=max_hours * 3600, dedupe=dedupe)
        write_recordings(df, wd.recordings)

    summary = ing.summarize(df)
    table = Table(title=f"ingest: {len(files)} files", title_justify="left")
    for c in ("status", "files", "hours"):
        table.add_column(c, justify="right" if c != "status" else "left")
    for r in summary.iter_rows(named=True):
        table.add_row(r["status"], str(r["files"]), f"{r['hours']:.2f}")
    stdout.print(table)
    bad = df.filter(pl_status_not_ok()).select("recording_id", "status", "reason")
    for r in bad.head(20).iter_rows(named=True):
        stdout.print(f"  {r['status']:8s} {r['recording_id']}: {r['reason']}")
    if bad.height > 20:
        stdout.print(f"  … and {bad.height - 20} more (see {wd.recordings})")
    if sidecars:
        stdout.print(f"  skipped {len(sidecars)} sidecar file(s) (csv, txt, json, ...)")
    if unmatched:
        stdout.print(f"  {unmatched} metadata row(s) matched no file")
    stdout.print(f"recordings → {wd.recordings}", soft_wrap=True)


def pl_status_not_ok():
    import polars as pl

    return pl.col("status") != "ok"


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
