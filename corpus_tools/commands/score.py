"""`corpus score`: how clean each segmentation is, measured against reference annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def score(
    workdir: Annotated[Path, typer.Argument(help="Work directory with recordings.parquet and segments/.")],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", metavar="REF",
        help="Reference file or folder (searched recursively): RTTM speaker turns (.rttm; MUSIC, NOISE, "
        "SILENCE and NON-SPEECH lines are non-speech labels), Audacity label tracks (.txt, one per "
        "recording, named after it), a label CSV recording,start,end,label (.csv), word times (.ctm). "
        "Matched to recordings by recording id or by the stem of the recording's file name.")],
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", help="Only these methods (comma-separated or repeated; default: every "
        "segmentation in WORKDIR).")] = None,
    collar: Annotated[Optional[list[float]], typer.Option(
        help="DER/JER collar in seconds, pyannote.metrics' meaning: the total width of the region "
        "centred on each reference turn boundary that is not scored (0.25 = ±0.125 s). Repeatable; "
        "default 0 and 0.25.")] = None,
) -> None:
    """Score each segmentation against a reference: speech precision and recall, music / noise /
    silence share of kept time, speaker purity and segments with a second speaker, word cuts at
    segment edges, and for wx-diar* DER / JER (pyannote.metrics) and speaker-label purity.

    Prints one row per method (durations summed over the scored recordings) and writes
    WORKDIR/segments/scores.csv, scores_per_recording.csv and scores.json; `corpus report` shows
    them. Only recordings with a reference are scored.

    Example: corpus score work/ --reference archive/reference/
    """
    from rich.table import Table

    from corpus_tools.progress import fail, stdout, user_errors
    from corpus_tools.score.run import DEFAULT_COLLARS, run_score, short_list
    from corpus_tools.score.table import display_rows

    with user_errors():
        methods = [m.strip() for item in (method or []) for m in item.split(",") if m.strip()]
        if "all" in methods:
            methods = []
        if not reference.exists():
            raise fail(f"reference not found: {reference}")
        res = run_score(workdir, reference, methods or None, collars=tuple(collar) if collar else DEFAULT_COLLARS)
    headers, rows = display_rows(res.methods.to_dicts(), res.collars)
    table = Table(title=f"segmentation quality of {workdir} against {reference}")
    for h in headers:
        # 17 columns: headers wrap onto two lines rather than being cut to "spe…"
        table.add_column(h, justify="left" if h == "method" else "right", no_wrap=h == "method",
                         overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    stdout.print(f"scored {len(res.scored)} recording(s); {len(res.skipped)} without a reference skipped")
    if res.unmatched:
        stdout.print(f"{len(res.unmatched)} reference(s) match no ok recording: {short_list(res.unmatched)}")
    for note in res.notes:
        stdout.print(f"note: {note}")
    stdout.print(f"scores → {res.paths['csv']}  {res.paths['per_recording']}  {res.paths['json']}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
