"""Shards written by Ray tasks, and the merge of shard directories written in parts: same
bytes and the same index as one ``write_shards`` run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl

from corpus_tools.parallel.parts import MergeError
from corpus_tools.parallel.ray_utils import cluster_cpus, init_ray, ray_get
from corpus_tools.progress import progress_bar
from corpus_tools.shards import state
from corpus_tools.shards.plan import plan_shards
from corpus_tools.shards.tar_writer import temp_path
from corpus_tools.shards.write import FORMATS, write_shards


def _shard_part(segments_df, out_dir: str, opts: dict, parts: int, index: int) -> int:
    """One Ray task: the shards with ``idx % parts == index`` (returns their count)."""
    write_shards(segments_df, out_dir, num_shards=parts, shard_index=index, workers=1,
                 progress=False, overwrite=False, **opts)
    return index


def write_shards_ray(segments_df, out_dir: str | os.PathLike, *, address: str | None = None,
                     workers: int = 0, overwrite: bool = False, progress: bool = True, **opts):
    """``shards.write_shards`` with the shards written by Ray tasks; same bytes, same index.

    The driver plans once (to size the work and to check or clear ``out_dir`` once), then
    ``workers`` tasks (0: the cluster's CPUs) each write a disjoint subset of the plan via
    ``write_shards(num_shards=K, shard_index=i)``. Returns the index (``shards.parquet``).
    """
    out = Path(out_dir)
    plan_opts = {k: opts[k] for k in ("samples_per_shard", "max_shard_bytes", "strategy", "seed",
                                      "prefix", "split") if k in opts}
    specs = plan_shards(segments_df, **plan_opts)
    fmt = opts.get("fmt", "wav")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    state.open_out_dir(out, specs, fmt, opts.get("prefix", "shard"), overwrite)
    if not specs:
        return write_shards(segments_df, out, progress=False, **opts)
    ray = init_ray(address)
    parts = max(1, min(len(specs), workers if workers > 0 else cluster_cpus(ray)))
    task = ray.remote(num_cpus=1)(_shard_part)
    df_ref = ray.put(segments_df)
    refs = [task.remote(df_ref, str(out), opts, parts, i) for i in range(parts)]
    with progress_bar(disable=None if progress else True) as bar:
        t = bar.add_task(f"shard [ray ×{parts}]", total=parts, info=f"{len(specs)} shards")
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray_get(done)
            bar.update(t, advance=1)
    index_path = out / state.INDEX_NAME
    if not index_path.exists():  # every part ended, so the last one wrote it; be sure anyway
        return finish_shard_dir(out)
    return pl.read_parquet(index_path)


def finish_shard_dir(shard_dir: str | os.PathLike):
    """Write ``shards.parquet`` of a directory whose parts all finished (``corpus merge``).

    The index is built from the per-shard markers exactly as ``write_shards`` builds it.
    Raises ``MergeError`` naming the shards still missing.
    """
    out = Path(shard_dir)
    plan = _read_plan(out)
    state.migrate_state(out)
    markers, missing = [], []
    for name in plan["shards"]:
        m = state.finished_marker(out, name, plan["fingerprint"])
        if m is None:
            missing.append(name)
        else:
            markers.append(m)
    if missing:
        raise MergeError(f"{len(missing)} of {len(plan['shards'])} shards are not finished "
                         f"(e.g. {', '.join(missing[:3])}): rerun the `corpus shard` part(s) that "
                         f"write them (same manifest and options)")
    return state.write_index(out, markers)


def _read_plan(out: Path) -> dict:
    try:
        return state.read_plan(out)
    except (OSError, ValueError):
        raise MergeError(f"{out} holds no shard plan ({state.STATE_DIR}/{state.PLAN_NAME}): not a "
                         f"`corpus shard` output directory") from None


def gather_shard_parts(part_dirs: list[Path], out_dir: Path) -> int:
    """Copy (hard-link when possible) the finished shards of part directories written on
    separate machines into ``out_dir``; all must come from the same plan. Returns the
    number of shards brought in."""
    plans = {d: _read_plan(d) for d in part_dirs}
    fps = {p["fingerprint"] for p in plans.values()}
    if len(fps) > 1:
        raise MergeError("the shard directories come from different manifests or options "
                         "(their plans differ); merge only parts of one `corpus shard` run")
    out_dir.mkdir(parents=True, exist_ok=True)
    state.migrate_state(out_dir)
    first = next(iter(plans.values()))
    if out_dir.resolve() not in {d.resolve() for d in part_dirs}:
        try:
            own = _read_plan(out_dir)
        except MergeError:
            own = None
        if own is not None and own["fingerprint"] != first["fingerprint"]:
            raise MergeError(f"{out_dir} already holds shards of another plan")
        state.write_plan(out_dir, first)
        for extra in (state.DISTRIBUTION_NAME,):
            for d in part_dirs:
                if (d / extra).is_file() and not (out_dir / extra).exists():
                    _link_or_copy(d / extra, out_dir / extra)
    brought = 0
    for d in part_dirs:
        if d.resolve() == out_dir.resolve():
            continue
        for name in first["shards"]:
            m = state.finished_marker(d, name, None)
            if m is None:
                continue
            if state.finished_marker(out_dir, name, first["fingerprint"]) is not None:
                continue
            _link_or_copy(d / name, out_dir / name)
            state.write_marker(out_dir, name, m)  # marker last
            brought += 1
    return brought


def _link_or_copy(src: Path, dst: Path) -> None:
    # Not atomic.atomic_path: that reopens the file to fsync it, which a hard link to a
    # read-only shard refuses. The temp name has no ".tar" in it: shard globs must not find it.
    tmp = temp_path(dst, f".{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
