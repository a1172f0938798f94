"""`corpus holdout`: mark a validation split in a corpus that has none."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def holdout(
    manifest: Annotated[Path, typer.Argument(
        help="A segments manifest (.parquet/.csv/.tsv), e.g. from `corpus import` or a work "
             "directory's segments/METHOD.parquet.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The manifest to write (.parquet).")],
    per_session: Annotated[int, typer.Option(
        min=1, help="Utterances held out per session (the session column; the recording "
                    "when a row has none).")] = 1,
    pick: Annotated[str, typer.Option(
        help="median: the utterance(s) around the session's median length; random: drawn "
             "with --seed.")] = "median",
    seed: Annotated[int, typer.Option(help="Seed of --pick random.")] = 0,
) -> None:
    """Mark N training utterances of every session as split `dev` (the thesis' validation split).

    Only rows whose split is train or unknown take part; dev and test rows stay as they are. Every session keeps at least one utterance for training: a session with a single training utterance gives none, one with N or fewer gives all but one. The same manifest and options give the same split (random picks are seeded per session). Then `corpus shard OUT` writes the training shards and `corpus shard OUT --split dev` the validation shards.
    """
    from corpus_tools.progress import fail, stdout, user_errors
    from corpus_tools.splits import PICKS, holdout_manifest

    if pick not in PICKS:
        raise typer.BadParameter(f"use one of {', '.join(PICKS)}", param_hint="--pick")
    if out.suffix.lower() != ".parquet":
        raise typer.BadParameter("write the manifest as .parquet", param_hint="--out")
    with user_errors():
        if out.resolve() == manifest.resolve():
            raise fail("write the held-out manifest to a new file (-o), not over its input")
        s = holdout_manifest(manifest, out, per_session=per_session, pick=pick, seed=seed)
    single = (f"; {s.single} session{'s' if s.single != 1 else ''} with a single training "
              f"utterance kept for training" if s.single else "")
    stdout.print(f"held out {s.utterances} utterances ({s.seconds / 3600:.2f} h) of "
                 f"{s.sessions} sessions as dev{single} → {s.out}")


def register(app: typer.Typer) -> None:
    app.command("holdout")(holdout)
