"""Ray connection and task helpers shared by the backends, plus worker counting and a bounded
``imap`` over futures (the local process pool's queue)."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from corpus_tools.logs import ENV


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


def ray_get_next(results: Iterator):
    """``next(results)`` of an ActorPool iterator with task errors unwrapped."""
    with ray_errors_unwrapped():
        return next(results)


def map_on_actors(actors: list, submit: Callable[[Any, Any], Any], items: Iterable) -> Iterator:
    """Results of ``submit(actor, item)`` (an actor method's ``.remote`` call) as they complete.

    Ray's ``ActorPool`` hands an item to an actor only when it is idle: at most one item in
    flight per actor, the rest wait in the driver. The actors are killed when the iteration
    ends, fails or is abandoned.
    """
    import ray

    try:
        results = ray.util.ActorPool(actors).map_unordered(submit, items)
        while True:
            try:
                yield ray_get_next(results)
            except StopIteration:
                return
    finally:
        for a in actors:
            ray.kill(a)


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


def bounded_imap(submit: Callable[[Any], Any], items: list, limit: int) -> Iterator:
    """Results of ``submit(item)`` futures as they complete, at most ``limit`` queued."""
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
