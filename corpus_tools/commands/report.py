"""`corpus report`: a Markdown or HTML report of a work directory and training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    workdir: Annotated[Path, typer.Argument(help="Work directory (recordings.parquet, segments/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report file: NAME.md or NAME.html. PNGs go to "
                                      "NAME_files/ next to it.")] = Path("report.html"),
    run: Annotated[Optional[list[Path]], typer.Option(
        "--run", help="A `trainer pretrain` or `trainer finetune` run directory (its log.jsonl; "
        "eval/*/summary.json of `trainer evaluate`). Repeatable.")] = None,
    shards: Annotated[Optional[list[Path]], typer.Option(
        "--shards", help="A `corpus shard` output folder to summarise. Repeatable.")] = None,
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", help="Only these segmentation methods (comma-separated or repeated).")] = None,
    embed: Annotated[bool, typer.Option("--embed/--link", help="HTML: embed the PNGs as base64 (one "
                                        "self-contained file) or link the files.")] = True,
    title: Annotated[Optional[str], typer.Option(help="Report title.")] = None,
) -> None:
    """Write one report: hours per ingest filter, the Table 14 table with hours dropped per rule,
    length histograms, shard sets and, with --run, the training curves and evaluation results.

    Example: corpus report work/ --run runs/pretrain --run runs/finetune -o report.html
    """
    from corpus_tools.progress import fail, stdout, user_errors

    if out.suffix.lower() not in (".md", ".html", ".htm"):
        raise typer.BadParameter(f"must end in .md or .html, got {out.name}", param_hint="--out")
    with user_errors():
        methods = [m for item in (method or []) for m in item.split(",") if m] or None
        if not (workdir / "recordings.parquet").exists():
            raise fail(f"{workdir}/recordings.parquet not found: is {workdir} a work directory "
                       f"(`corpus ingest ... -o {workdir}`)?")
        from corpus_tools.report import build_report

        path = build_report(workdir, out, runs=run or [], shards=shards or [], methods=methods,
                            embed_images=embed, title=title)
    stdout.print(f"report → {path}  (images in {path.parent / (path.stem + '_files')})")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
