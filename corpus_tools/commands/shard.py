"""`corpus shard`: write a segments manifest as WebDataset tar shards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools.manifests import read_segments, resolve_segments_source
from corpus_tools.parallel.shards import write_shards_ray
from corpus_tools.progress import fail, stdout, user_errors
from corpus_tools.shards import FORMATS, STRATEGIES, write_shards
from corpus_tools.splits import CHOICES, select_segments

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | None) -> int | None:
    """'2GB', '500M', '1.5GiB', '1000000' → bytes."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"not a size: {text!r} (examples: 2GB, 500MB, 1GiB)")
    unit = (m.group(2) or "").lower().rstrip("b")
    if unit not in _UNITS:
        raise typer.BadParameter(f"unknown size unit in {text!r}")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise typer.BadParameter("the shard size must be positive")
    return value


def shard(
    src: Annotated[Path, typer.Argument(
        help="A work directory (with segments/METHOD.parquet) or any segments manifest "
             "(.parquet/.csv/.tsv), e.g. one written by `corpus import`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory for the shards.")],
    method: Annotated[Optional[str], typer.Option(
        "--method", "-m", help="Segmentation method to shard (needed when WORKDIR holds several).")] = None,
    samples_per_shard: Annotated[int, typer.Option(
        min=1, help="Utterances per shard (nanow2v2 uses 5000).")] = 5000,
    max_shard_size: Annotated[Optional[str], typer.Option(
        "--max-shard-size", help="Also close a shard before it passes this size, e.g. 1GB "
        "(planned on 16-bit PCM, so flac shards come out smaller).")] = None,
    strategy: Annotated[str, typer.Option(
        help="length_sorted: shards are length bins (little padding when batching); "
             "random: shuffled with --seed.")] = "length_sorted",
    fmt: Annotated[str, typer.Option("--format", help=(
        "Audio member format (16-bit, 16 kHz mono): wav is read by our trainer, the webdataset "
        "library and nanow2v2; flac (about half the size) by our trainer and webdataset only, "
        "since nanow2v2 decodes .wav members only."))] = "wav",
    seed: Annotated[int, typer.Option(help="Seed of the random strategy.")] = 0,
    prefix: Annotated[str, typer.Option(help="Shard names are PREFIX.000000.tar, ... (.partial.tar for the last).")] = "shard",
    workers: Annotated[int, typer.Option(min=1, help="Processes that decode and encode in parallel (shards "
                                         "sharing compressed recordings are written together, each recording "
                                         "decoded once); Ray tasks with --backend ray, where 1 means one per "
                                         "cluster CPU.")] = 1,
    backend: Annotated[str, typer.Option(help="local | ray: write the shards as Ray tasks (same bytes).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --backend ray.")] = None,
    num_shards: Annotated[int, typer.Option(
        "--num-shards", min=1, help="Split the work: this run writes only shards with index % N == I.")] = 1,
    shard_index: Annotated[int, typer.Option("--shard-index", min=0, help="I of --num-shards.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Replace shards of a different manifest/options already in OUT.")] = False,
    split: Annotated[str, typer.Option(
        help="Rows to shard by their split column: train (rows whose split is train or "
             "unknown), dev, test or all. Training shards never hold dev/test data unless "
             "asked for here.")] = "train",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Cut each segment from its recording (16 kHz mono) and write WebDataset tar shards.

    Output: PREFIX.NNNNNN.tar shards holding {key}.json + {key}.wav|flac per utterance (readable by `webdataset`, plain `tar` and nanow2v2), shards.parquet (per shard: count, hours, min/max duration, bytes, sha256) and _shard_distribution.csv.

    Only training rows are written by default: rows whose split (as `corpus import` writes it) is dev or test are left out and counted; --split dev|test|all writes them.

    The same manifest and options give byte-identical shards. An interrupted run resumes at the first unfinished shard when rerun with the same arguments.
    """
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"use one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    if split not in CHOICES:
        raise typer.BadParameter(f"use one of {', '.join(CHOICES)}", param_hint="--split")
    if backend not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--backend")
    if shard_index >= num_shards:
        raise typer.BadParameter(f"must be below --num-shards ({num_shards})", param_hint="--shard-index")
    max_bytes = parse_size(max_shard_size)
    with user_errors():
        manifest = resolve_segments_source(src, method)
        segments = read_segments(manifest)
        if segments.height == 0:
            raise fail(f"{manifest} holds no segments")
        kept, left = select_segments(segments, split)
        if kept.height == 0:
            raise fail(f"{manifest} holds no {split} segments: {left.message()}")
        if left:
            stdout.print(left.message())
        if backend == "ray":
            if num_shards > 1:
                raise fail("--backend ray already spreads the shards over the cluster; "
                           "drop --num-shards/--shard-index")
            index = write_shards_ray(segments, out, address=ray_address,
                                     workers=workers if workers > 1 else 0, overwrite=overwrite,
                                     progress=progress, samples_per_shard=samples_per_shard,
                                     max_shard_bytes=max_bytes, strategy=strategy, fmt=fmt,
                                     seed=seed, prefix=prefix, split=split)
        else:
            index = write_shards(segments, out, samples_per_shard=samples_per_shard,
                                 max_shard_bytes=max_bytes, strategy=strategy, fmt=fmt, seed=seed,
                                 prefix=prefix, workers=workers, progress=progress,
                                 num_shards=num_shards, shard_index=shard_index, overwrite=overwrite,
                                 split=split)
    hours = float(index["hours"].sum()) if index.height else 0.0
    gb = float(index["bytes"].sum()) / 1e9 if index.height else 0.0
    stdout.print(f"{index.height} shards ({int(index['count'].sum()) if index.height else 0} "
                 f"utterances, {hours:.2f} h, {gb:.2f} GB) in {out}")
    if (out / "shards.parquet").exists():
        stdout.print(f"index: {out / 'shards.parquet'}")
    else:
        stdout.print("other --shard-index parts are still to be written; the index appears "
                     "when the last part finishes")


def register(app: typer.Typer) -> None:
    app.command("shard")(shard)
