"""Segmentation on parallel workers: the worker set-up (models, the driver's stage caches),
the Ray actor class, and :func:`process_recordings`, which runs ``runner.process_recording``
on local processes or Ray actors for ``segment.run.run_segment``."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from typing import Any, Iterator

from corpus_tools import logs
from corpus_tools.manifests import WorkDir
from corpus_tools.parallel.ray_utils import (bounded_imap, cluster_cpus, cluster_gpus, default_workers,
                                             gpu_count, init_ray, ray_get_next)
from corpus_tools.segment.backends import ModelSet, SegmentConfig, resolve_stage_keys
from corpus_tools.segment.runner import StageCache, key_differences, key_digest, process_recording

_WORKER_STATE: dict[str, Any] = {}


def _worker_init(workdir: str, cfg_dict: dict, threads: int, stage_keys: dict, gpu_queue=None) -> None:
    """Set up one worker's models and the driver's stage caches (once per process/actor)."""
    if gpu_queue is not None:  # one GPU per local worker: set before torch sees CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    logs.configure()  # a spawned process or actor starts with Python's defaults: CORPUS_LOG decides
    import torch

    torch.set_num_threads(max(1, threads))
    cfg = SegmentConfig(**cfg_dict)
    _WORKER_STATE.update(models=ModelSet(cfg), cache=StageCache(WorkDir(workdir), stage_keys),
                         same_models=False)


def _check_worker_models() -> None:
    """The worker caches under the driver's keys, so what it loads must be what the driver
    resolved (another machine may hold other files under the same names or paths)."""
    expected = {s: k for s, k in _WORKER_STATE["cache"].keys.items() if s != "error"}
    mine = _WORKER_STATE["models"].stage_keys(list(expected))
    for stage, key in expected.items():
        if key_digest(mine[stage]) != key_digest(key):
            raise ValueError(f"a worker on {socket.gethostname()} resolves different models than the driver "
                             f"for stage {stage} ({key_differences(mine[stage], key)}); give every machine "
                             f"the same models (--models-dir / CORPUS_MODELS)")
    _WORKER_STATE["same_models"] = True


def _worker_run(args: tuple[dict, list[str]]) -> dict:
    if not _WORKER_STATE["same_models"]:
        _check_worker_models()
    rec, stages = args
    return process_recording(rec, stages, _WORKER_STATE["cache"], _WORKER_STATE["models"])


class SegmentWorker:
    """One worker's models and stage cache; the Ray actor class wraps this."""

    def __init__(self, workdir: str, cfg_dict: dict, threads: int, stage_keys: dict):
        _worker_init(workdir, cfg_dict, threads, stage_keys)

    def run(self, rec: dict, stages: list[str]) -> dict:
        return _worker_run((rec, stages))


def process_recordings(recs: list[dict], stages: list[str], wd, cfg, *, backend: str = "local",
                       workers: int = 2, address: str | None = None, threads: int | None = None,
                       stage_keys: dict | None = None) -> Iterator[dict]:
    """``runner.process_recording`` for each of ``recs`` on parallel workers; yields each
    result as it arrives (in completion order). ``segment.run.fill_caches`` drains it.

    ``stage_keys``: the driver's ``resolve_stage_keys`` (resolved here when not given); every
    worker caches under them and first checks that it resolves the same models.

    ``local``: ``workers`` spawned processes (0: one per GPU), each with its models, each
    pinned to one GPU when there are several. ``ray``: one actor per cluster GPU, else
    ``workers`` CPU actors (0: one per two cluster CPUs). ``threads``: torch threads per
    worker (default: the CPUs divided among the workers). Finished recordings are in the
    stage caches whatever happens to the run afterwards.
    """
    if stage_keys is None:
        stage_keys = resolve_stage_keys(cfg, stages)
    cfg_dict = asdict(cfg)
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
                yield res
        finally:
            for a in actors:
                ray.kill(a)
        return
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
            yield from bounded_imap(lambda r: ex.submit(_worker_run, (r, stages)), recs, limit=2 * n)
    except BrokenProcessPool:
        raise ChildProcessError(
            "a segmentation worker process died (out of memory or killed?); finished "
            "recordings are cached: rerun to resume") from None
