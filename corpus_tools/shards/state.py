"""A shard directory's state: the plan, the per-shard resume markers, the index and the
distribution table, and the checks that decide which shards a run may trust.

A shard is finished when its marker (``.state/shard.NNNNNN.json``, written after the shard)
carries the plan's fingerprint and the shard's size; everything else is rewritten. The index
``shards.parquet`` is built from the markers alone, so any process (a Ray task, ``corpus
merge``) that finds every marker can write it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import polars as pl

from corpus_tools.atomic import atomic_path, write_text
from corpus_tools.manifests import write_parquet_atomic
from corpus_tools.shards.plan import ShardSpec, legacy_fingerprint, plan_fingerprint
from corpus_tools.shards.tar_writer import shard_stem

log = logging.getLogger(__name__)

STATE_DIR = ".state"
PLAN_NAME = "plan.json"
INDEX_NAME = "shards.parquet"
DISTRIBUTION_NAME = "_shard_distribution.csv"

INDEX_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String,  # file name of the shard
    "shard_idx": pl.Int64,
    "partial": pl.Boolean,  # the incomplete last shard (.partial.tar)
    "count": pl.Int64,  # utterances
    "hours": pl.Float64,
    "min_duration": pl.Float64,  # seconds
    "max_duration": pl.Float64,
    "num_frames": pl.Int64,  # total 16 kHz frames
    "bytes": pl.Int64,
    "sha256": pl.String,
    "format": pl.String,  # wav | flac
}


def _write_state_json(path: Path, obj) -> None:
    # the temp name is per process: parts running at once (SLURM array, Ray tasks) all write plan.json
    write_text(path, json.dumps(obj, sort_keys=True, indent=1))


# -- the plan ------------------------------------------------------------------------------


def plan_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / STATE_DIR / PLAN_NAME


def read_plan(out_dir: str | os.PathLike) -> dict:
    """The plan a ``corpus shard`` run recorded (raises ``OSError`` or ``ValueError``)."""
    return json.loads(plan_path(out_dir).read_text())


def write_plan(out_dir: str | os.PathLike, plan: dict) -> None:
    _write_state_json(plan_path(out_dir), plan)


# -- markers -------------------------------------------------------------------------------


def marker_path(out_dir: str | os.PathLike, name: str) -> Path:
    """The resume marker of shard ``name``: ``.state/shard.000001.json``."""
    return Path(out_dir) / STATE_DIR / f"{shard_stem(name)}.json"


def _old_marker_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / STATE_DIR / f"{name}.json"  # earlier versions: .state/shard.000001.tar.json


def read_marker(out_dir: str | os.PathLike, name: str) -> dict | None:
    """Shard ``name``'s marker (today's or an earlier version's name), None if unreadable."""
    for path in (marker_path(out_dir, name), _old_marker_path(out_dir, name)):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def write_marker(out_dir: str | os.PathLike, name: str, marker: dict) -> None:
    """Mark shard ``name`` finished; written after the shard itself."""
    _write_state_json(marker_path(out_dir, name), marker)


def finished_marker(out_dir: str | os.PathLike, name: str, fingerprint: str | None) -> dict | None:
    """The marker of shard ``name`` when the shard can be trusted: the marker is readable,
    the shard's size is the marker's and (unless ``fingerprint`` is None) the marker
    belongs to the plan ``fingerprint``. None otherwise."""
    m = read_marker(out_dir, name)
    p = Path(out_dir) / name
    if (m is None or (fingerprint is not None and m.get("fingerprint") != fingerprint)
            or not p.is_file() or p.stat().st_size != m.get("bytes")):
        return None
    return m


def migrate_state(out_dir: str | os.PathLike) -> int:
    """Bring a folder written by an earlier version to today's names: its markers
    ``.state/{shard}.tar.json`` become ``.state/{stem}.json`` and its temp files
    ``.{shard}.tmp`` (a killed writer's) go, since nanow2v2's ``*.tar*`` globs take both for
    shards. Returns the number of markers renamed."""
    out = Path(out_dir)
    renamed = 0
    state = out / STATE_DIR
    if state.is_dir():
        for old in sorted(state.glob("*.tar.json")):
            new = marker_path(out, old.name[: -len(".json")])
            try:
                if new.exists():
                    old.unlink()
                else:
                    os.replace(old, new)
                    renamed += 1
            except FileNotFoundError:  # another part of the same run migrated it first
                pass
        for tmp in state.glob(".*.tar.json.*.tmp"):
            tmp.unlink(missing_ok=True)
    if out.is_dir():
        for tmp in out.glob(".*.tar*.tmp"):
            tmp.unlink(missing_ok=True)
    if renamed:
        log.info("%s: renamed %d resume markers written by an earlier version", out, renamed)
    return renamed


# -- index and distribution tables ---------------------------------------------------------


def index_frame(markers: list[dict]) -> pl.DataFrame:
    """The index rows of finished shards (``shards.parquet``), in shard order."""
    rows = [{"name": m["name"], "shard_idx": m["shard_idx"], "partial": m["partial"],
             "count": m["count"], "hours": m["seconds"] / 3600.0,
             "min_duration": m["min_duration"], "max_duration": m["max_duration"],
             "num_frames": m["num_frames"], "bytes": m["bytes"], "sha256": m["sha256"],
             "format": m["format"]} for m in sorted(markers, key=lambda m: m["shard_idx"])]
    return pl.DataFrame(rows, schema=INDEX_SCHEMA)


def write_index(out_dir: str | os.PathLike, markers: list[dict]) -> pl.DataFrame:
    """Write ``shards.parquet`` from the markers of every shard; returns it."""
    index = index_frame(markers)
    write_parquet_atomic(index, Path(out_dir) / INDEX_NAME)
    return index


def distribution_frame(specs: list[ShardSpec]) -> pl.DataFrame:
    """Which key went to which shard (nanow2v2's ``_shard_distribution.csv``)."""
    return pl.DataFrame(
        [{"key": it["key"], "segment_id": it["meta"]["id"], "shard_idx": s.index,
          "partial_shard": s.partial, "shard": s.name, "num_frames": it["num_frames"]}
         for s in specs for it in s.iter_items()],
        schema={"key": pl.String, "segment_id": pl.String, "shard_idx": pl.Int64,
                "partial_shard": pl.Boolean, "shard": pl.String, "num_frames": pl.Int64})


def write_distribution(out_dir: str | os.PathLike, specs: list[ShardSpec]) -> None:
    with atomic_path(Path(out_dir) / DISTRIBUTION_NAME) as tmp:
        distribution_frame(specs).write_csv(tmp)


# -- the output directory ------------------------------------------------------------------


def open_out_dir(out: Path, specs: list[ShardSpec], fmt: str, prefix: str,
                 overwrite: bool) -> str:
    """Make ``out`` ready for the plan ``specs`` and return its fingerprint: create it,
    migrate an earlier version's names, and refuse shards of another plan (unless
    ``overwrite``). A folder an earlier version wrote from the same rows and options is
    resumed; its shards whose json changed since (the ``transcription`` key) are rewritten,
    the others are kept."""
    fingerprint = plan_fingerprint(specs, fmt)
    out.mkdir(parents=True, exist_ok=True)
    migrate_state(out)
    _check_out_dir(out, fingerprint, prefix, overwrite,
                   also_same=lambda: legacy_fingerprint(specs, fmt))
    return fingerprint


def _check_out_dir(out: Path, fingerprint: str, prefix: str, overwrite: bool,
                   also_same: Callable[[], str] | None = None) -> None:
    """Refuse to mix shards of different plans in one directory (unless ``overwrite``).

    ``also_same()``: another fingerprint that counts as this plan (an earlier version's)."""
    # list the tars before reading the plan: a concurrent part writes its plan before its
    # first shard, so a shard seen here always comes with a readable plan
    existing = sorted(p.name for p in out.glob(f"{prefix}.*.tar"))
    try:
        old = read_plan(out).get("fingerprint")
    except (OSError, ValueError):
        old = None
    if old == fingerprint:
        return
    if old is not None and also_same is not None and old == also_same():
        log.info("%s was written by an earlier version: resuming it", out)
        return
    if (old is not None or existing) and not overwrite:
        raise FileExistsError(
            f"{out} already holds shards written from a different manifest or options "
            f"({len(existing)} tar files); pass overwrite=True (--overwrite) or choose a new "
            f"output directory")
    if overwrite:
        for name in existing:
            (out / name).unlink()
        if (out / STATE_DIR).is_dir():
            for p in (out / STATE_DIR).glob("*.json"):
                p.unlink()
        (out / INDEX_NAME).unlink(missing_ok=True)
