"""Scale-out: the same per-item work on local worker processes or a Ray cluster.

No scheduler of our own. Local parallelism is a process pool (spawned processes, each
loading its models once, at most ``2 × workers`` items queued); the cluster is Ray (actors
that hold their models, one per GPU when the cluster has GPUs, CPU actors otherwise).
``--num-shards N --shard-index I`` splits a run into parts for array schedulers (SLURM);
``corpus merge`` combines them.

Every backend writes exactly what the local backend writes, through the same functions:

* segment — workers fill the per-recording stage caches (atomic files); the driver
  assembles the manifests from the caches with ``runner.assemble``;
* shard — Ray tasks call ``write_shards(..., num_shards=K, shard_index=i)`` on disjoint
  subsets of the one deterministic plan; the index is written from the shard markers;
* stem — actors run ``stems.stem_batch`` on the very batches ``stem_clips`` would form;
* ingest — probes run as Ray tasks; the driver journals each result as it arrives.

So outputs are byte-identical whichever backend ran, and every backend resumes from
whatever a killed run (of any backend) left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from corpus_tools.progress import console, progress_bar

# -- Ray -----------------------------------------------------------------------------------


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` (a running cluster, or "auto") or start a local Ray instance.

    An already initialised Ray (a test fixture, a notebook) is reused as it is.
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise RuntimeError("--backend ray needs the `ray` package (pip install 'ray[default]')") from exc
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  "include_dashboard": False}
        from corpus_tools.logs import ENV

        if address and os.environ.get(ENV):  # a cluster's workers do not see our environment
            kwargs["runtime_env"] = {"env_vars": {ENV: os.environ[ENV]}}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return ray


@contextmanager
def ray_errors_unwrapped():
    """Re-raise a Ray task's own exception (a PermissionError stays one), so the CLI prints
    its usual one-line error instead of Ray's wrapped traceback; a dead worker becomes one
    clear error that says finished work is kept."""
    import ray

    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as exc:
        raise ChildProcessError(f"a Ray worker died ({str(exc).splitlines()[0]}); "
                                "finished work is kept: rerun to resume") from None


def ray_get(refs):
    """``ray.get`` with task errors unwrapped."""
    import ray

    with ray_errors_unwrapped():
        return ray.get(refs)


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def ray_map(fn: Callable, items: Iterable, *, address: str | None = None, kwargs: dict | None = None,
            num_cpus_per_task: float = 1.0, window: int | None = None) -> Iterator:
    """``fn(x, **kwargs)`` for each item as Ray tasks; yields results in input order.

    At most ``window`` tasks (default 4 × cluster CPUs) are in flight, and each result is
    yielded as soon as it and those before it are done, so a caller that journals results
    (ingest) loses at most the items in flight when it is killed.
    """
    ray = init_ray(address)
    kw = kwargs or {}

    @ray.remote(num_cpus=num_cpus_per_task)
    def task(x):
        return fn(x, **kw)

    window = window or 4 * cluster_cpus(ray)
    pending: deque = deque()
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < window:
            try:
                pending.append(task.remote(next(it)))
            except StopIteration:
                exhausted = True
        if not pending:
            return
        yield ray_get(pending.popleft())


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without torch or a GPU)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def default_workers(workers: int, device: str = "auto") -> int:
    """``workers`` when positive; else one per visible GPU (one when there is none)."""
    if workers > 0:
        return workers
    return max(1, gpu_count()) if device in ("auto", "cuda") else 1


# -- segmentation workers -------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _worker_init(workdir: str, cfg_dict: dict, threads: int, stage_keys: dict, gpu_queue=None) -> None:
    """Set up one worker's models and the driver's stage caches (once per process/actor)."""
    if gpu_queue is not None:  # one GPU per local worker: set before torch sees CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    from corpus_tools import logs

    logs.configure()  # a spawned process or actor starts with Python's defaults: CORPUS_LOG decides
    import torch

    from corpus_tools.manifests import WorkDir
    from corpus_tools.segment.backends import ModelSet, SegmentConfig
    from corpus_tools.segment.runner import StageCache

    torch.set_num_threads(max(1, threads))
    cfg = SegmentConfig(**cfg_dict)
    _WORKER_STATE.update(models=ModelSet(cfg), cache=StageCache(WorkDir(workdir), stage_keys),
                         same_models=False)


def _check_worker_models() -> None:
    """The worker caches under the driver's keys, so what it loads must be what the driver
    resolved (another machine may hold other files under the same names or paths)."""
    from corpus_tools.segment.runner import key_differences, key_digest

    expected = {s: k for s, k in _WORKER_STATE["cache"].keys.items() if s != "error"}
    mine = _WORKER_STATE["models"].stage_keys(list(expected))
    for stage, key in expected.items():
        if key_digest(mine[stage]) != key_digest(key):
            import socket

            raise ValueError(f"a worker on {socket.gethostname()} resolves different models than the driver "
                             f"for stage {stage} ({key_differences(mine[stage], key)}); give every machine "
                             f"the same models (--models-dir / CORPUS_MODELS)")
    _WORKER_STATE["same_models"] = True


def _worker_run(args: tuple[dict, list[str]]) -> dict:
    from corpus_tools.segment.runner import process_recording

    if not _WORKER_STATE["same_models"]:
        _check_worker_models()
    rec, stages = args
    res = process_recording(rec, stages, _WORKER_STATE["cache"], _WORKER_STATE["models"])
    return {**res, "recording_id": rec["recording_id"], "duration": rec["duration"]}


class SegmentWorker:
    """One worker's models and stage cache; the Ray actor class wraps this."""

    def __init__(self, workdir: str, cfg_dict: dict, threads: int, stage_keys: dict):
        _worker_init(workdir, cfg_dict, threads, stage_keys)

    def run(self, rec: dict, stages: list[str]) -> dict:
        return _worker_run((rec, stages))


def bounded_imap(submit: Callable[[Any], Any], items: list, limit: int) -> Iterator:
    """Results of ``submit(item)`` futures as they complete, at most ``limit`` queued."""
    from concurrent.futures import FIRST_COMPLETED, wait

    it = iter(items)
    pending: set = set()
    while True:
        for item in it:
            pending.add(submit(item))
            if len(pending) >= limit:
                break
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in done:
            yield f.result()


def run_segment_parallel(recs: list[dict], stages: list[str], wd, cfg, *, backend: str = "local",
                         workers: int = 2, address: str | None = None,
                         threads: int | None = None, stage_keys: dict | None = None) -> float:
    """Fill the stage caches for ``recs`` in parallel; returns summed model seconds.

    ``stage_keys``: the driver's ``resolve_stage_keys`` (resolved here when not given); every
    worker caches under them and first checks that it resolves the same models.

    ``local``: ``workers`` spawned processes (0: one per GPU), each with its models, each
    pinned to one GPU when there are several. ``ray``: one actor per cluster GPU, else
    ``workers`` CPU actors (0: one per two cluster CPUs). ``threads``: torch threads per
    worker (default: the CPUs divided among the workers). Finished recordings are in the
    stage caches whatever happens to the run afterwards.
    """
    if stage_keys is None:
        from corpus_tools.segment.backends import resolve_stage_keys

        stage_keys = resolve_stage_keys(cfg, stages)
    cfg_dict = asdict(cfg)
    total, done_audio = 0.0, 0.0
    t0 = time.perf_counter()
    failed: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task(f"segment [{backend}]", total=len(recs), info="")

        def tick(res: dict) -> None:
            nonlocal total, done_audio
            total += res["seconds"]
            if res["computed"]:
                done_audio += res["duration"]
            if res.get("error"):
                failed.append(f"{res['recording_id']}: {res['error']}")
            wall = time.perf_counter() - t0
            bar.update(task, advance=1, info=f"{done_audio / wall:.1f}× real time" if done_audio else "cached")

        if backend == "ray":
            ray = init_ray(address)
            gpus = cluster_gpus(ray) if cfg.device in ("auto", "cuda") else 0
            cpus = cluster_cpus(ray)
            n = gpus if gpus else (workers if workers > 0 else max(1, cpus // 2))
            threads = threads or max(1, cpus // n)
            actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(SegmentWorker)
            actors = [actor_cls.remote(str(wd.root), cfg_dict, threads, stage_keys) for _ in range(n)]
            try:
                # ActorPool hands a recording to an actor only when it is idle: at most one
                # recording in flight per actor, the rest wait in the driver
                pool = ray.util.ActorPool(actors)
                results = pool.map_unordered(lambda a, r: a.run.remote(r, stages), recs)
                while True:
                    try:
                        res = ray_get_next(results)
                    except StopIteration:
                        break
                    tick(res)
            finally:
                for a in actors:
                    ray.kill(a)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures.process import BrokenProcessPool

            n = default_workers(workers, cfg.device)
            gpus = gpu_count() if cfg.device in ("auto", "cuda") else 0
            ctx = mp.get_context("spawn")  # CUDA and forked torch do not mix
            gpu_queue = None
            if gpus > 1:
                gpu_queue = ctx.Queue()
                for i in range(n):
                    gpu_queue.put(i % gpus)
            threads = threads or max(1, (os.cpu_count() or 1) // n)
            try:
                with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init,
                                         initargs=(str(wd.root), cfg_dict, threads, stage_keys, gpu_queue)) as ex:
                    for res in bounded_imap(lambda r: ex.submit(_worker_run, (r, stages)), recs,
                                            limit=2 * n):
                        tick(res)
            except BrokenProcessPool:
                raise ChildProcessError(
                    "a segmentation worker process died (out of memory or killed?); finished "
                    "recordings are cached: rerun to resume") from None
    for line in failed:
        console.print(f"  failed {line}")
    return total


def ray_get_next(results: Iterator):
    """``next(results)`` of an ActorPool iterator with task errors unwrapped."""
    with ray_errors_unwrapped():
        return next(results)


# -- segmentation parts (--num-shards / --shard-index) and merging -------------------------

PARTS_DIR = "parts"


def part_record_path(wd, shard_index: int, num_shards: int) -> Path:
    return wd.cache_dir(PARTS_DIR) / f"segment-{shard_index:05d}-of-{num_shards:05d}.json"


def record_segment_part(wd, shard_index: int, num_shards: int, methods: list[str], cfg,
                        recordings: list[str], phrase_lists: list[str] | None = None,
                        stage_keys: dict | None = None) -> Path:
    """Mark part ``shard_index`` of ``num_shards`` finished: its settings, the stage keys of
    the models it resolved, methods, recordings and phrase list files (None: the language's
    default list), so ``corpus merge WORKDIR`` can assemble the manifests from the very cache
    folders the parts wrote, without being told the options again or resolving models itself
    (and refuse parts made with different settings or models)."""
    from corpus_tools.segment.runner import _atomic_write

    path = part_record_path(wd, shard_index, num_shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps({
        "num_shards": num_shards, "shard_index": shard_index, "methods": methods,
        "settings": asdict(cfg), "stage_keys": stage_keys or {}, "phrase_lists": phrase_lists,
        "recordings": recordings,
    }, indent=1, ensure_ascii=False))
    return path


def read_segment_parts(wd) -> list[dict]:
    d = wd.cache_dir(PARTS_DIR)
    out = []
    for p in sorted(d.glob("segment-*-of-*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # a torn record is a part to rerun
    return out


def _part_phrase_lists(part: dict) -> tuple[str, ...] | None:
    """The phrase list files a part recorded; None means the language's default list. Parts
    recorded before lists extended the default name their one ``phrase_list``, which replaced it."""
    if "phrase_lists" in part:
        return None if part["phrase_lists"] is None else tuple(part["phrase_lists"])
    return None if part.get("phrase_list") is None else (part["phrase_list"],)


class MergeError(ValueError):
    """Parts cannot be merged (missing, different settings, incomplete shards)."""


def _parts_stage_keys(parts: list[dict]) -> dict[str, dict]:
    """The stage keys the parts resolved, which must agree stage by stage: merging never
    resolves models itself (the merging machine may hold other models, or none)."""
    from corpus_tools.segment.runner import key_differences, key_digest

    keys: dict[str, dict] = {}
    first: dict[str, int] = {}
    for p in sorted(parts, key=lambda p: p["shard_index"]):
        if "stage_keys" not in p:
            raise MergeError(f"part {p['shard_index']} was recorded without the models it used (an older "
                             f"`corpus segment`); rerun it")
        for stage, key in p["stage_keys"].items():
            if stage not in keys:
                keys[stage], first[stage] = key, p["shard_index"]
            elif key_digest(key) != key_digest(keys[stage]):
                raise MergeError(f"parts {first[stage]} and {p['shard_index']} resolved different models for "
                                 f"stage {stage} ({key_differences(keys[stage], key)}); rerun the parts "
                                 f"with the same models")
    return keys


def merge_segment_parts(wd, methods: list[str] | None = None) -> list[tuple[str, Any, dict]]:
    """Assemble and write the manifests of a work directory segmented in parts.

    Checks that every part 0..N-1 finished with the same settings and that every ok
    recording has its stages cached; then writes exactly what an unsplit run writes.
    Returns ``[(method, segments_df, drops)]``.
    """
    from corpus_tools.segment import postprocess as pp
    from corpus_tools.segment import runner
    from corpus_tools.segment.backends import SegmentConfig
    from corpus_tools.segment.standard_outputs import write_standard_outputs

    parts = read_segment_parts(wd)
    if not parts:
        raise MergeError(f"no segmentation parts recorded in {wd.cache_dir(PARTS_DIR)}: run "
                         f"`corpus segment {wd.root} --num-shards N --shard-index I` for each I first")
    counts = sorted({p["num_shards"] for p in parts})
    if len(counts) > 1:
        raise MergeError(f"parts of different splits in one work directory (--num-shards "
                         f"{', '.join(map(str, counts))}); remove {wd.cache_dir(PARTS_DIR)} and rerun the parts")
    n = counts[0]
    have = {p["shard_index"] for p in parts}
    missing = [i for i in range(n) if i not in have]
    if missing:
        raise MergeError(f"parts {', '.join(map(str, missing))} of {n} have not finished: run "
                         f"`corpus segment {wd.root} --num-shards {n} --shard-index I` for those")
    keys = _parts_stage_keys(parts)
    settings = {json.dumps(p["settings"], sort_keys=True) for p in parts}
    phrase_lists = {_part_phrase_lists(p) for p in parts}
    if len(settings) > 1 or len(phrase_lists) > 1:
        raise MergeError("the parts were run with different model settings; rerun them with the same options")
    part_methods = sorted({m for p in parts for m in p["methods"]}, key=runner.METHODS.index)
    methods = methods or part_methods
    cfg = SegmentConfig(**{"word_timestamps": False, **parts[0]["settings"]})  # parts from before the option
    stages = runner.stages_for(methods)
    unrun = [s for s in stages if s not in keys]
    if unrun:
        raise MergeError(f"no part ran stage(s) {', '.join(unrun)} (methods "
                         f"{', '.join(m for m in methods if m not in part_methods)} were not in the parts); "
                         f"rerun the parts with those methods")
    cache = runner.StageCache(wd, keys)
    recs = runner.ok_recordings(wd)
    lacking = [r["recording_id"] for r in recs
               if cache.get("error", r["recording_id"]) is None
               and any(cache.get(s, r["recording_id"]) is None for s in stages)]
    if lacking:
        extra = f" (methods {', '.join(m for m in methods if m not in part_methods)} were not in the parts)" \
            if set(methods) - set(part_methods) else ""
        raise MergeError(f"{len(lacking)} recording(s) lack cached stages {', '.join(stages)}{extra}, "
                         f"e.g. {', '.join(lacking[:3])}; rerun their parts with those methods")
    files = pp.phrase_files(cfg.language, next(iter(phrase_lists)), default=next(iter(phrase_lists)) is None)
    phrases = pp.load_phrases(cfg.language, files, default=False)
    out = []
    for m in methods:
        df, drops = runner.assemble(m, recs, cache, phrases, cfg.language)
        drops["phrase_lists"] = [str(f) for f in files]
        runner.write_method(wd, m, df, drops, cfg)
        out.append((m, df, drops))
    write_standard_outputs(wd, recs, cache, stages)
    return out


# -- sharding on Ray -------------------------------------------------------------------------


def _shard_part(segments_df, out_dir: str, opts: dict, parts: int, index: int) -> int:
    """One Ray task: the shards with ``idx % parts == index`` (returns their count)."""
    from corpus_tools.shards import write_shards

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
    import polars as pl

    from corpus_tools import shards as sh

    out = Path(out_dir)
    plan_opts = {k: opts[k] for k in ("samples_per_shard", "max_shard_bytes", "strategy", "seed",
                                      "prefix", "split") if k in opts}
    specs = sh.plan_shards(segments_df, **plan_opts)
    fmt = opts.get("fmt", "wav")
    if fmt not in sh.FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(sh.FORMATS)}")
    sh.open_out_dir(out, specs, fmt, opts.get("prefix", "shard"), overwrite)
    if not specs:
        return sh.write_shards(segments_df, out, progress=False, **opts)
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
    index_path = out / sh.INDEX_NAME
    if not index_path.exists():  # every part ended, so the last one wrote it; be sure anyway
        return finish_shard_dir(out)
    return pl.read_parquet(index_path)


def finish_shard_dir(shard_dir: str | os.PathLike):
    """Write ``shards.parquet`` of a directory whose parts all finished (``corpus merge``).

    The index is built from the per-shard markers exactly as ``write_shards`` builds it.
    Raises ``MergeError`` naming the shards still missing.
    """
    from corpus_tools import shards as sh
    from corpus_tools.manifests import write_parquet_atomic

    out = Path(shard_dir)
    plan = _read_plan(out)
    sh.migrate_state(out)
    markers, missing = [], []
    for name in plan["shards"]:
        m = sh._read_marker(out, name)
        p = out / name
        if (m is None or m.get("fingerprint") != plan["fingerprint"] or not p.is_file()
                or p.stat().st_size != m.get("bytes")):
            missing.append(name)
        else:
            markers.append(m)
    if missing:
        raise MergeError(f"{len(missing)} of {len(plan['shards'])} shards are not finished "
                         f"(e.g. {', '.join(missing[:3])}): rerun the `corpus shard` part(s) that "
                         f"write them (same manifest and options)")
    index = sh._index_frame(markers)
    write_parquet_atomic(index, out / sh.INDEX_NAME)
    return index


def _read_plan(out: Path) -> dict:
    from corpus_tools import shards as sh

    try:
        return json.loads((out / sh.STATE_DIR / "plan.json").read_text())
    except (OSError, ValueError):
        raise MergeError(f"{out} holds no shard plan ({sh.STATE_DIR}/plan.json): not a "
                         f"`corpus shard` output directory") from None


def gather_shard_parts(part_dirs: list[Path], out_dir: Path) -> int:
    """Copy (hard-link when possible) the finished shards of part directories written on
    separate machines into ``out_dir``; all must come from the same plan. Returns the
    number of shards brought in."""
    import shutil

    from corpus_tools import shards as sh

    plans = {d: _read_plan(d) for d in part_dirs}
    fps = {p["fingerprint"] for p in plans.values()}
    if len(fps) > 1:
        raise MergeError("the shard directories come from different manifests or options "
                         "(their plans differ); merge only parts of one `corpus shard` run")
    out_dir.mkdir(parents=True, exist_ok=True)
    sh.migrate_state(out_dir)
    first = next(iter(plans.values()))
    if out_dir.resolve() not in {d.resolve() for d in part_dirs}:
        try:
            own = _read_plan(out_dir)
        except MergeError:
            own = None
        if own is not None and own["fingerprint"] != first["fingerprint"]:
            raise MergeError(f"{out_dir} already holds shards of another plan")
        sh._write_json_atomic(out_dir / sh.STATE_DIR / "plan.json", first)
        for extra in (sh.DISTRIBUTION_NAME,):
            for d in part_dirs:
                if (d / extra).is_file() and not (out_dir / extra).exists():
                    _link_or_copy(d / extra, out_dir / extra, shutil)
    brought = 0
    for d in part_dirs:
        if d.resolve() == out_dir.resolve():
            continue
        for name in first["shards"]:
            m = sh._read_marker(d, name)
            p = d / name
            if m is None or not p.is_file() or p.stat().st_size != m.get("bytes"):
                continue
            if sh._is_done(out_dir, _Spec(name), first["fingerprint"]) is not None:
                continue
            _link_or_copy(p, out_dir / name, shutil)
            sh._write_json_atomic(sh.marker_path(out_dir, name), m)  # marker last
            brought += 1
    return brought


class _Spec:  # the one attribute shards._is_done reads
    def __init__(self, name: str):
        self.name = name


def _link_or_copy(src: Path, dst: Path, shutil) -> None:
    from corpus_tools.shards import temp_path

    tmp = temp_path(dst, f".{os.getpid()}")  # no ".tar" in it: shard globs must not find it
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# -- stems on Ray ----------------------------------------------------------------------------


class StemWorker:
    """Holds one Demucs separator and Silero VAD; separates whole batches of clips."""

    def __init__(self, out_dir: str, model: str, models_dir: str | None, device: str,
                 threads: int = 1):
        import torch

        from corpus_tools import logs
        from corpus_tools.stems import load_separator, load_vad

        logs.configure()

        if threads > 0:
            torch.set_num_threads(threads)
        self.out, self.device, self.model_name = Path(out_dir), device, str(model)
        self.sep = load_separator(model, models_dir, device)
        self.vad = load_vad()

    def run(self, clips: list[dict], shifts: int, min_vocal_seconds: float) -> list[tuple[str, str]]:
        from corpus_tools.stems import Clip, stem_batch

        status: list[tuple[str, str]] = []
        stem_batch([Clip(**c) for c in clips], self.out, self.sep, self.vad, self.device,
                   model_name=self.model_name, shifts=shifts, min_vocal_seconds=min_vocal_seconds,
                   on_clip=lambda cid, st: status.append((cid, st)))
        return status


def stem_clips_ray(manifest: str | Path, out_dir: str | Path, *, model: str = "htdemucs",
                   models_dir: str | Path | None = None, device: str | None = None,
                   batch_size: int = 4, min_vocal_seconds: float = 0.5, shifts: int = 0,
                   address: str | None = None, workers: int = 0, threads: int = 0,
                   on_clip: Callable[[str, str], None] | None = None):
    """``stems.stem_clips`` with the batches separated by Ray actors (one per GPU, else
    ``workers`` CPU actors, 0: one per two cluster CPUs). Same files, same table."""
    from corpus_tools import stems

    out = Path(out_dir)
    for sub in ("vocals", "instrumental", "records"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    clips = stems.manifest_clips(manifest)
    todo = []
    for c in clips:
        if (out / "records" / f"{stems.safe_name(c.clip_id)}.json").exists():
            if on_clip:
                on_clip(c.clip_id, "skipped")
        else:
            todo.append(c)
    if todo:
        ray = init_ray(address)
        gpus = cluster_gpus(ray) if device in (None, "auto", "cuda") else 0
        dev = "cuda" if gpus else (device if device not in (None, "auto") else "cpu")
        batches = stems.clip_batches(todo, batch_size)
        cpus = cluster_cpus(ray)
        n = min(len(batches), gpus if gpus else (workers if workers > 0 else max(1, cpus // 2)))
        per_actor_threads = threads if threads > 0 else max(1, cpus // n)
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(StemWorker)
        actors = [actor_cls.remote(str(out), str(model), str(models_dir) if models_dir else None,
                                   dev, per_actor_threads) for _ in range(n)]
        try:
            pool = ray.util.ActorPool(actors)
            results = pool.map_unordered(
                lambda a, b: a.run.remote([c.__dict__ for c in b], shifts, min_vocal_seconds), batches)
            while True:
                try:
                    status = ray_get_next(results)
                except StopIteration:
                    break
                for cid, st in status:
                    if on_clip:
                        on_clip(cid, st)
        finally:
            for a in actors:
                ray.kill(a)
    return stems.write_table(out, [c.clip_id for c in clips])
