"""`corpus import CORPUS DIR -o OUT`: standard corpora → segments manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools.importers import IMPORTERS
from corpus_tools.manifests import write_segments
from corpus_tools.progress import fail, stdout, user_errors

import_app = typer.Typer(
    name="import",
    help=(
        "Turn a standard corpus on disk into a segments manifest that `corpus shard` and "
        "`corpus simulate` read.\n\n"
        "Example: corpus import librispeech LibriSpeech/train-clean-100 -o ls100.parquet "
        "→ corpus shard ls100.parquet -o shards/ls100/"
    ),
    no_args_is_help=True,
)

OutOpt = Annotated[Path, typer.Option("-o", "--out", help=(
    "Where to write the segments manifest: a .parquet file, or a folder (it gets KIND.parquet, "
    "e.g. OUT/librispeech.parquet)."))]
_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".gz")
WorkersOpt = Annotated[int, typer.Option(min=1, help="Threads reading audio headers for durations.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]


def _split_list(text: str | None) -> list[str] | None:
    """Option callback: a comma-separated option arrives in the command as a list."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def manifest_path(out: Path, name: str) -> Path:
    """``-o``: a ``.parquet`` file as given, else a folder that gets ``NAME.parquet``."""
    if out.suffix.lower() == ".parquet" and not out.is_dir():
        return out
    if out.suffix.lower() in _FILE_SUFFIXES and not out.is_dir():
        raise typer.BadParameter(f"write the manifest as .parquet, or give a folder (not {out.suffix})",
                                 param_hint="--out")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a folder or .parquet path", param_hint="--out")
    return out / f"{name}.parquet"


def _run(name: str, root: Path, out: Path, workers: int = 4, progress: bool = False,
         **options) -> None:
    """Import ``root`` with importer ``name``, write the manifest and print a summary line."""
    out = manifest_path(out, name)
    with user_errors():
        df = IMPORTERS[name](root, workers=workers, progress=progress, **options)
        if df.height == 0:
            raise fail(f"{name}: nothing to import from {root}")
        write_segments(df, out)
    hours = float(df["duration"].sum()) / 3600
    speakers = df["speaker"].drop_nulls().n_unique()
    stdout.print(f"{name}: {df.height} segments, {hours:.2f} h"
                 + (f", {speakers} speakers" if speakers else "") + f" → {out}")


@import_app.command("librispeech")
def librispeech(
    root: Annotated[Path, typer.Argument(help="A LibriSpeech split folder (e.g. train-clean-100) or the LibriSpeech root.")],
    out: OutOpt,
    workers: WorkersOpt = 4,
    progress: ProgressOpt = True,
) -> None:
    """LibriSpeech: SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + SPEAKER-CHAPTER.trans.txt.

    speaker, session = chapter, transcript; gender from SPEAKERS.TXT when present; split = train/dev/test from the subset folder (train-clean-100 → train, dev-clean → dev, ...).
    """
    _run("librispeech", root, out, workers, progress)


@import_app.command("mls")
def mls(
    root: Annotated[Path, typer.Argument(help="An MLS language folder (e.g. mls_dutch) or one split folder.")],
    out: OutOpt,
    language: Annotated[Optional[str], typer.Option(help="Language tag; default from the folder name (mls_dutch → nl).")] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits to import (default: all found).",
                                                  callback=_split_list)] = None,
    workers: WorkersOpt = 4,
    progress: ProgressOpt = True,
) -> None:
    """Multilingual LibriSpeech: {split}/transcripts.txt + {split}/audio/SPK/BOOK/SPK_BOOK_UTT.flac|opus."""
    _run("mls", root, out, workers, progress, language=language, splits=splits)


@import_app.command("commonvoice")
def commonvoice(
    root: Annotated[Path, typer.Argument(help="A Common Voice language folder (cv-corpus-18.0-.../nl) with *.tsv and clips/.")],
    out: OutOpt,
    splits: Annotated[str, typer.Option(help="Comma-separated tsv files to read, in priority order (the tsv "
                                             "goes in column cv_list). Column split is dev/test for clips in "
                                             "dev.tsv/test.tsv, read for this in any case, train otherwise.",
                                        callback=_split_list)] = "train,dev,test",
    language: Annotated[Optional[str], typer.Option(help="Language tag when the tsv has no locale column.")] = None,
    workers: WorkersOpt = 4,
    progress: ProgressOpt = True,
) -> None:
    """Common Voice (v18): {train,dev,test,validated}.tsv + clips/*.mp3.

    speaker = client_id, text = sentence; durations from clip_durations.tsv when present.
    """
    _run("commonvoice", root, out, workers, progress, splits=splits or ["train"], language=language)


@import_app.command("musan")
def musan(
    root: Annotated[Path, typer.Argument(help="The musan folder (holding noise/, music/, speech/).")],
    out: OutOpt,
    subsets: Annotated[str, typer.Option(help="Comma-separated subsets: noise, music, speech.",
                                         callback=_split_list)] = "noise",
    categories: Annotated[Optional[Path], typer.Option(
        help="CSV id,category assigning noise files to technical/ambient/crowd "
             "(MUSAN itself does not label them).")] = None,
    workers: WorkersOpt = 4,
    progress: ProgressOpt = True,
) -> None:
    """MUSAN noise (free-sound, sound-bible) for the data-quality simulation."""
    _run("musan", root, out, workers, progress, subsets=subsets or ["noise"], categories=categories)


@import_app.command("fma")
def fma(
    root: Annotated[Path, typer.Argument(help="fma_large (NNN/NNNNNN.mp3) or the folder holding it and fma_metadata/.")],
    out: OutOpt,
    metadata: Annotated[Optional[Path], typer.Option(help="fma_metadata folder or tracks.csv (default: found next to the audio).")] = None,
    workers: WorkersOpt = 4,
    progress: ProgressOpt = True,
) -> None:
    """FMA 30 s music clips with genre_top / genres from tracks.csv and genres.csv."""
    _run("fma", root, out, workers, progress, metadata=metadata)


@import_app.command("lhotse")
def lhotse(
    root: Annotated[Path, typer.Argument(help=(
        "A Lhotse CutSet or SupervisionSet (.jsonl.gz; the RecordingSet of the same name, "
        "..._recordings_..., is read with it), or a folder of them such as a recipe's output "
        "folder (supervisions + recordings pairs if there are any, else cut files)."))],
    out: OutOpt,
) -> None:
    """Lhotse manifests (any of Lhotse's recipes, or `corpus export lhotse`) → segments.

    One segment per supervision, cut from its recording's source file; speaker, text (as given), language names as ISO codes (English → en), gender and the supervision's custom fields; split from the part in the file name (..._dev-clean → dev) or from our own export.
    """
    _run("lhotse", root, out)


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
