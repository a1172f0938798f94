"""`corpus export lhotse SRC -o DIR`: segments manifests → other toolkits' formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

export_app = typer.Typer(
    name="export",
    help=("Write a segments manifest in another toolkit's format.\n\n"
          "Example: corpus export lhotse work/ --method wx-diar-3s -o lhotse/nl "
          "→ lhotse.load_manifest('lhotse/nl/cuts.jsonl.gz')"),
    no_args_is_help=True,
)


@export_app.command("lhotse")
def lhotse(
    src: Annotated[Path, typer.Argument(
        help="A work directory (with segments/METHOD.parquet and recordings.parquet) or any segments "
             "manifest (.parquet/.csv/.tsv), e.g. one written by `corpus import`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for recordings.jsonl.gz, "
                                      "supervisions.jsonl.gz and cuts.jsonl.gz.")],
    method: Annotated[Optional[str], typer.Option(
        "--method", "-m", help="Segmentation method to export (needed when the work directory holds several).")] = None,
    recordings: Annotated[Optional[Path], typer.Option(
        help="recordings.parquet giving each file's duration, sample rate and channels (default: the "
             "work directory's; files it does not list are probed with ffprobe).")] = None,
) -> None:
    """Lhotse RecordingSet + SupervisionSet + CutSet of a segments manifest.

    Each segment becomes a supervision (speaker, text, language, gender; method, session, split and the other columns in custom) on the Recording of its source file, with that file's real path, sample rate, channels and duration. The CutSet holds one cut per segment (cut id = segment id), ready for Lhotse's samplers, datasets and feature extractors. Same manifest → same bytes.
    """
    from corpus_tools.lhotse_io import export_lhotse
    from corpus_tools.manifests import read_recordings, read_segments, resolve_segments_source
    from corpus_tools.progress import console, stdout, user_errors

    with user_errors():
        path = resolve_segments_source(src, method)
        segments = read_segments(path)
        if recordings is None:  # WORKDIR/segments/METHOD.parquet → WORKDIR/recordings.parquet
            for cand in (src / "recordings.parquet", path.parent.parent / "recordings.parquet"):
                if cand.is_file():
                    recordings = cand
                    break
        recs = read_recordings(recordings) if recordings is not None else None
        res = export_lhotse(segments, out, recordings=recs)
    stdout.print(f"lhotse: {res['supervisions']} supervisions on {res['recordings']} recordings, "
                 f"{res['hours']:.2f} h, {res['cuts']} cuts → {out}")
    if res["clipped"]:
        console.print(f"  {res['clipped']} segment(s) ran up to 0.5 s past the end of their recording "
                      f"and end at the recording's end in the Lhotse manifests")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
