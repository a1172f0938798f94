"""Scale-out: the same per-recording work on local worker processes or a Ray cluster.

No scheduler of our own: local parallelism is a ``multiprocessing`` pool (spawned processes,
each loading its models once, a bounded number of recordings in flight), the cluster is Ray
(actors that hold their models; one per GPU when GPUs exist, CPU actors otherwise).

Workers write exactly what the local backend writes — the per-recording stage caches,
atomically — and the driver assembles the manifests from those caches with the same pure
functions, so outputs are identical whichever backend ran the models.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any, Callable, Iterable

from corpus_tools.progress import progress_bar


# -- Ray -----------------------------------------------------------------------------------


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` (a running cluster) or start a local Ray instance."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise RuntimeError("--backend ray needs the `ray` package (pip install 'ray[default]')") from exc
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  "include_dashboard": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return ray


def ray_map(fn: Callable, items: Iterable, *, address: str | None = None, kwargs: dict | None = None,
            num_cpus_per_task: float = 1.0) -> list:
    """``[fn(x, **kwargs) for x in items]`` as Ray tasks, results in input order."""
    ray = init_ray(address)
    remote = ray.remote(num_cpus=num_cpus_per_task)(lambda x, kw: fn(x, **kw))
    refs = [remote.remote(x, kwargs or {}) for x in items]
    return ray.get(refs)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


# -- segmentation workers -----------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _worker_init(workdir: str, cfg_dict: dict, threads: int) -> None:
    import torch

    from corpus_tools.manifests import WorkDir
    from corpus_tools.segment.backends import ModelSet, SegmentConfig
    from corpus_tools.segment.runner import StageCache

    torch.set_num_threads(max(1, threads))
    cfg = SegmentConfig(**cfg_dict)
    _WORKER_STATE.update(models=ModelSet(cfg), cache=StageCache(WorkDir(workdir), cfg))


def _worker_run(args: tuple[dict, list[str]]) -> dict:
    from corpus_tools.segment.runner import process_recording

    rec, stages = args
    res = process_recording(rec, stages, _WORKER_STATE["cache"], _WORKER_STATE["models"])
    return {**res, "recording_id": rec["recording_id"], "duration": rec["duration"]}


class SegmentWorker:
    """Holds one process's models; the Ray actor class wraps this."""

    def __init__(self, workdir: str, cfg_dict: dict, threads: int = 1):
        _worker_init(workdir, cfg_dict, threads)

    def run(self, rec: dict, stages: list[str]) -> dict:
        return _worker_run((rec, stages))


def run_segment_parallel(recs: list[dict], stages: list[str], wd, cfg, *, backend: str = "local",
                         workers: int = 2, address: str | None = None) -> float:
    """Fill the stage caches for ``recs`` in parallel; returns summed model seconds."""
    cfg_dict = asdict(cfg)
    total, done_audio = 0.0, 0.0
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"segment [{backend}]", total=len(recs), info="")

        def tick(res: dict) -> None:
            nonlocal total, done_audio
            total += res["seconds"]
            if res["computed"]:
                done_audio += res["duration"]
            wall = time.perf_counter() - t0
            bar.update(task, advance=1, info=f"{done_audio / wall:.1f}× real time" if done_audio else "cached")

        if backend == "ray":
            ray = init_ray(address)
            gpus = int(ray.cluster_resources().get("GPU", 0))
            n = max(1, gpus) if gpus else max(1, workers)
            threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // n)
            actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(SegmentWorker)
            actors = [actor_cls.remote(str(wd.root), cfg_dict, threads) for _ in range(n)]
            pool = ray.util.ActorPool(actors)
            for res in pool.map_unordered(lambda a, r: a.run.remote(r, stages), recs):
                tick(res)
            for a in actors:
                ray.kill(a)
        else:
            import multiprocessing as mp

            n = max(1, workers)
            threads = max(1, (os.cpu_count() or 1) // n)
            ctx = mp.get_context("spawn")  # CUDA and forked torch do not mix
            with ctx.Pool(n, initializer=_worker_init, initargs=(str(wd.root), cfg_dict, threads)) as pool:
                # imap with chunksize 1 keeps at most ~2 recordings per worker in flight
                for res in pool.imap_unordered(_worker_run, [(r, stages) for r in recs], chunksize=1):
                    tick(res)
    return total
