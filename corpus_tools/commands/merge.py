"""`corpus merge`: combine the parts of a run split with --num-shards/--shard-index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools import verify as vf
from corpus_tools.commands.segment import print_standard_outputs
from corpus_tools.manifests import WorkDir
from corpus_tools.parallel.parts import MergeError, merge_segment_parts, read_segment_parts
from corpus_tools.parallel.shards import finish_shard_dir, gather_shard_parts
from corpus_tools.progress import fail, stdout, user_errors
from corpus_tools.segment.runner import parse_methods


def merge(
    dirs: Annotated[list[Path], typer.Argument(
        help="A work directory segmented in parts, or one or more shard directories written in "
             "parts.", show_default=False)],
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", help="Work directory: methods to assemble (default: those the parts "
        "ran; comma-separated or repeated).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "-o", "--out", help="Shard directories: where to gather the shards (default: the first "
        "directory).")] = None,
) -> None:
    """Combine parts into the output an unsplit run writes (byte for byte).

    Work directory: `corpus segment WORKDIR --num-shards N --shard-index I` fills only the
    stage caches; once all N parts have finished, this assembles and writes
    segments/METHOD.parquet with the settings the parts recorded.

    Shard directories: parts written into one directory (`corpus shard --num-shards N
    --shard-index I`) get their shards.parquet index here if the last part did not write it;
    parts written into separate directories (separate machines) are gathered into --out
    first (hard links when possible).
    """
    with user_errors():
        for d in dirs:
            if not d.is_dir():
                raise fail(f"no such directory: {d}")
        if all(vf.is_workdir(d) for d in dirs):
            if len(dirs) > 1:
                raise fail("merge one work directory at a time (its parts share its cache/)")
            wd = WorkDir(dirs[0])
            try:
                written = merge_segment_parts(wd, parse_methods(method) if method else None)
            except MergeError as exc:
                raise fail(str(exc)) from None
            for m, segments, drops in written:
                stdout.print(f"  {m:11s} {segments:6d} segments  {drops['kept_seconds'] / 3600:8.3f} h kept  "
                             f"→ {wd.segments(m)}")
            print_standard_outputs({"rttm": len(list(wd.rttm_dir.glob("*.rttm"))),
                                    "ctm": len(list(wd.ctm_dir.glob("*.ctm")))}, wd)
            stdout.print(f"merged {len(read_segment_parts(wd))} parts of {wd.root}")
            return
        if all(vf.is_shard_dir(d) for d in dirs):
            dest = out or dirs[0]
            try:
                brought = gather_shard_parts(list(dirs), dest) if len(dirs) > 1 or out else 0
                index = finish_shard_dir(dest)
            except MergeError as exc:
                raise fail(str(exc)) from None
            extra = f" ({brought} gathered from other directories)" if brought else ""
            stdout.print(f"{index.height} shards ({int(index['count'].sum())} utterances, "
                         f"{float(index['hours'].sum()):.2f} h){extra}; index: {dest / 'shards.parquet'}")
            return
        raise fail("give one work directory (with recordings.parquet) or shard directories "
                   "(with .state/plan.json), not a mix")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
