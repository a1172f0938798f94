"""`corpus verify`: check manifests against shards (counts, hours, checksums, readability)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from corpus_tools import verify as vf
from corpus_tools.manifests import WorkDir, read_recordings, read_segments, resolve_segments_source
from corpus_tools.progress import fail, stdout, user_errors


def verify(
    target: Annotated[Path, typer.Argument(
        help="A work directory (recordings.parquet, segments/) or a shard directory "
             "(shards.parquet).", show_default=False)],
    shards: Annotated[Optional[Path], typer.Option(
        "--shards", help="With a work directory: also check this shard directory against the "
        "segments of --method.")] = None,
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", help="Methods to check (default: every one present); the first is the "
        "one --shards was written from.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="With a shard directory: the segments manifest (or WORKDIR with "
        "--method) the shards were written from; ids, counts and hours must match.")] = None,
) -> None:
    """Check a work directory or shard directory and report any mismatch (exit 1).

    Shards: every tar's size and sha256 against shards.parquet, every tar readable to the
    end, every utterance a json + wav/flac pair with all required json keys and 16 kHz mono
    audio of the json's frame count, counts/frames/hours per shard as indexed, keys unique
    and as planned in _shard_distribution.csv; with --manifest, the same segment ids, times
    and hours as the manifest.

    Work directory: recordings and segments manifests valid, segment ids unique, every
    segment inside its ok recording, hours equal to the drop report, stage caches readable;
    with --shards, the shard checks against the segments of --method.

    Leftovers of killed runs (temp files) are warnings, not mismatches.
    """
    with user_errors():
        if not target.exists():
            raise fail(f"no such directory: {target}")
        if vf.is_shard_dir(target):
            segs = recs = None
            if manifest is not None:
                segs = read_segments(resolve_segments_source(manifest, method[0] if method else None))
                if manifest.is_dir() and WorkDir(manifest).recordings.is_file():
                    recs = read_recordings(WorkDir(manifest).recordings)
            report = vf.verify_shard_dir(target, segments=segs, recordings=recs)
        elif vf.is_workdir(target):
            report = vf.verify_workdir(target, methods=method or None, shards=shards)
        else:
            raise fail(f"{target} is neither a work directory (no recordings.parquet) nor a shard "
                       f"directory (no shards.parquet or .state/plan.json)")

    table = Table(title=f"verify {report.target}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[bold red]MISMATCH[/]", c.detail)
    stdout.print(table)
    for w in report.warnings:
        stdout.print(f"  warning: {w}")
    for p in report.problems[:50]:
        stdout.print(f"  problem: {p}")
    if len(report.problems) > 50:
        stdout.print(f"  … and {len(report.problems) - 50} more problems")
    if not report.ok:
        stdout.print(f"[bold red]{len(report.problems)} problem(s) found in {report.target}[/]")
        raise typer.Exit(1)
    stdout.print(f"[green]OK[/]: {report.target} is consistent")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
