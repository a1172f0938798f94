"""Stem separation on Ray actors: each actor holds one Demucs separator and Silero VAD and
separates whole batches of clips; the same files and table as ``stems.stem_clips``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from corpus_tools import logs, stems
from corpus_tools.parallel.ray_utils import cluster_cpus, cluster_gpus, init_ray, map_on_actors

class StemWorker:
    """Holds one Demucs separator and Silero VAD; separates whole batches of clips."""

    def __init__(self, out_dir: str, model: str, models_dir: str | None, device: str,
                 threads: int = 1):
        import torch

        logs.configure()

        if threads > 0:
            torch.set_num_threads(threads)
        self.out, self.device, self.model_name = Path(out_dir), device, str(model)
        self.sep = stems.load_separator(model, models_dir, device)
        self.vad = stems.load_vad()

    def run(self, clips: list[dict], shifts: int, min_vocal_seconds: float) -> list[tuple[str, str]]:
        status: list[tuple[str, str]] = []
        stems.stem_batch([stems.Clip(**c) for c in clips], self.out, self.sep, self.vad, self.device,
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
        for status in map_on_actors(
                actors, lambda a, b: a.run.remote([c.__dict__ for c in b], shifts, min_vocal_seconds), batches):
            for cid, st in status:
                if on_clip:
                    on_clip(cid, st)
    return stems.write_table(out, [c.clip_id for c in clips])
