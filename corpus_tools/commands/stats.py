"""`corpus stats`: the Table 14 summary of every segmentation in a work directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from corpus_tools.atomic import write_text
from corpus_tools.manifests import WorkDir
from corpus_tools.progress import fail, stdout, user_errors
from corpus_tools.stats import method_stats, plot_lengths


def stats(
    workdir: Annotated[Path, typer.Argument(help="Work directory with segments/<method>.parquet.")],
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="Only these methods.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a length-histogram PNG here.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the table as CSV.")] = None,
) -> None:
    """Print segments, hours kept, % discarded, mean/min/max length, hours dropped per rule,
    and which aligner and diarizer made each wx-* method."""
    with user_errors():
        wd = WorkDir(workdir)
        if not wd.recordings.exists():
            raise fail(f"{wd.recordings} not found: is {workdir} a work directory?")
        if not wd.methods_present():
            raise fail(f"no segmentations in {workdir}: run `corpus segment {workdir} --method ...` first")
        methods = [m for item in (method or []) for m in item.split(",") if m] or None
        df = method_stats(wd, methods)
    table = Table(title=f"segmentation of {workdir} (Table 14 layout)")
    heads = [("method", "method"), ("segments", "segments"), ("hours", "hours kept"),
             ("discarded_pct", "% discarded"), ("mean_s", "mean s"), ("min_s", "min s"), ("max_s", "max s"),
             ("phrase_h", "phrase h"), ("short_h", "short h"), ("off_speech_h", "off-speech h"),
             ("music_vad_h", "music/VAD h"), ("failed_h", "failed h")]
    for _, h in heads:
        table.add_column(h, justify="left" if h == "method" else "right", no_wrap=True)
    for r in df.iter_rows(named=True):
        table.add_row(*[r[k] if k == "method" else str(r[k]) if k == "segments"
                        else f"{r[k]:.2f}" if k in ("discarded_pct", "mean_s", "min_s", "max_s") else f"{r[k]:.3f}"
                        for k, _ in heads])
    stdout.print(table)
    made = [r for r in df.iter_rows(named=True) if r["aligner"] or r["diarizer"]]
    if made:
        models = Table(title="models that made the word-aligned methods (from segments/<method>.drops.json)")
        for h in ("method", "aligner", "diarizer"):
            models.add_column(h, no_wrap=True)
        for r in made:
            models.add_row(r["method"], r["aligner"] or "–", r["diarizer"] or "–")
        stdout.print(models)
    if csv:
        write_text(csv, df.write_csv())
        stdout.print(f"table → {csv}")
    if plot:
        stdout.print(f"length histograms → {plot_lengths(wd, plot, methods)}")


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)
