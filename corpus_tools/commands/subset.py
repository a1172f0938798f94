"""`corpus subset` (also `trainer subset`): draw a label subset of a manifest or a shard set by duration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SUBSET_HELP = """Draw a label subset by duration: random utterances until HOURS of audio are reached.

SRC is a segments manifest (.parquet/.csv) or a shard set (a folder or glob of *.tar). A manifest
gives a manifest (OUT ending in .csv is written as CSV, otherwise Parquet); a shard set gives a
shard folder, with the audio bytes copied as they are and a subset.json recording the draw.

The utterances are visited in a random order (--seed) and taken until the total reaches HOURS, so
the subset holds at least HOURS minus less than one utterance. The same seed gives the same
subset, and smaller budgets of one seed are nested in bigger ones (10 min ⊂ 1 h ⊂ 10 h).

  corpus subset ls-train.parquet --hours 1 --seed 0 -o ls-1h.parquet
  corpus subset shards/ls-train/ --hours 10 -o shards/ls-10h/
"""


def subset(
    src: Annotated[str, typer.Argument(metavar="SRC", help="A segments manifest (.parquet/.csv) or a shard set (folder/glob).")],
    hours: Annotated[float, typer.Option("--hours", help="Hours of audio to draw (e.g. 0.1667 for 10 min).")],
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="Output: a manifest file for a manifest, a shard folder for shards.")],
    seed: Annotated[int, typer.Option(help="Seed of the random draw (same seed: nested subsets).")] = 0,
) -> None:
    if hours <= 0:
        raise typer.BadParameter("must be positive", param_hint="--hours")
    # corpus_tools.subset reads shards with torch: imported here so that `--help` stays fast.
    from corpus_tools.manifests import ManifestError
    from corpus_tools.subset import MANIFEST_SUFFIXES, shard_set_error, write_subset

    if Path(src).suffix not in MANIFEST_SUFFIXES and (problem := shard_set_error(src)) is not None:
        raise typer.BadParameter(problem, param_hint="SRC")
    try:
        typer.echo(write_subset(src, hours, seed, out))
    except ManifestError as e:
        raise typer.BadParameter(str(e), param_hint="SRC")


def register(app: typer.Typer) -> None:
    app.command("subset", help=SUBSET_HELP, no_args_is_help=True)(subset)
