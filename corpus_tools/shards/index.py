"""Reading and checking a finished shard directory through its index."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl

from corpus_tools.manifests import ManifestError
from corpus_tools.shards.state import INDEX_NAME


def read_index(shard_dir: str | os.PathLike) -> pl.DataFrame:
    """The ``shards.parquet`` index of a complete shard directory."""
    p = Path(shard_dir) / INDEX_NAME
    if not p.is_file():
        raise ManifestError(f"no shard index at {p}: the shard directory is incomplete "
                            f"(rerun `corpus shard` to finish it)")
    return pl.read_parquet(p)


def verify_shards(shard_dir: str | os.PathLike) -> list[str]:
    """Check every indexed shard's size and sha256; return the problems found."""
    d = Path(shard_dir)
    problems = []
    for row in read_index(d).iter_rows(named=True):
        p = d / row["name"]
        if not p.is_file():
            problems.append(f"{row['name']}: missing")
            continue
        with open(p, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != row["sha256"]:
            problems.append(f"{row['name']}: sha256 mismatch")
    return problems
