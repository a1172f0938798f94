"""The segment stage: :func:`run_segment` takes :class:`SegmentArgs`, fills the stage caches
and writes ``segments/<method>.parquet`` per method; ``corpus segment`` parses options into
those args and prints the :class:`SegmentResult`.

The stage caches are filled by one loop (:func:`fill_caches`) over per-recording results,
whether ``runner.process_recording`` runs here or on worker processes or Ray actors
(``parallel.segment.process_recordings``, which calls the same function).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Iterable

from corpus_tools.ingest import Backend
from corpus_tools.manifests import WorkDir
from corpus_tools.parallel.parts import record_segment_part
from corpus_tools.parallel.segment import process_recordings
from corpus_tools.progress import progress_bar
from corpus_tools.segment import assemble
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment import runner
from corpus_tools.segment.backends import ModelSet, SegmentConfig
from corpus_tools.segment.prefetch import decode_ahead
from corpus_tools.segment.standard_outputs import write_standard_outputs

DEFAULT_METHODS = ("wx-diar-3s",)


class AsrBackend(str, Enum):
    """The Whisper implementation of the w-* methods (wx-* always use WhisperX)."""

    faster_whisper = "faster-whisper"
    openai_whisper = "openai-whisper"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class SegmentArgs:
    """What ``corpus segment`` takes: the model settings in ``config``, the run's own here."""

    workdir: Path
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  # names, "a,b" or "all"
    config: SegmentConfig = field(default_factory=SegmentConfig)  # models_dir None: $CORPUS_MODELS
    phrase_lists: list[Path] = field(default_factory=list)
    default_phrases: bool = True
    backend: str = Backend.local.value
    workers: int = 1  # > 1 or 0 (one per GPU): worker processes, or actors with backend ray
    ray_address: str | None = None
    num_shards: int = 1
    shard_index: int = 0
    retry_failed: bool = False


@dataclass
class MethodOutput:
    method: str
    segments: int
    kept_seconds: float
    path: Path


@dataclass
class SegmentResult:
    workdir: WorkDir
    methods: list[str]
    recordings: int  # segmented by this run (its part of them with num_shards > 1)
    audio_seconds: float
    model_seconds: float  # 0 when every stage came from the caches
    failed: list[str] = field(default_factory=list)  # "<recording>: <reason>"
    outputs: list[MethodOutput] = field(default_factory=list)  # none for one part of a split run
    standard_outputs: dict[str, int] = field(default_factory=dict)  # format -> files written
    part: tuple[int, int] | None = None  # (shard_index, num_shards) of a split run


def run_segment(args: SegmentArgs) -> SegmentResult:
    """Segment every ok recording of ``args.workdir`` with each method of ``args.methods``.

    Model outputs are cached per recording and stage, so reruns skip finished recordings and
    every method comes from one pass of each model. With ``num_shards > 1`` only this part's
    recordings are processed and recorded for ``corpus merge``; no manifest is written.
    """
    methods = runner.parse_methods(args.methods)
    if not methods:
        raise ValueError("no method given")
    cfg = args.config
    if cfg.asr_backend not in tuple(AsrBackend):
        raise ValueError(f"--asr-backend must be faster-whisper or openai-whisper, not {cfg.asr_backend!r}")
    if args.backend not in tuple(Backend):
        raise ValueError(f"--backend must be local or ray, not {args.backend!r}")
    if not (0 <= args.shard_index < args.num_shards):
        raise ValueError("--shard-index must be in [0, --num-shards)")
    if cfg.models_dir is None:
        cfg = replace(cfg, models_dir=os.environ.get("CORPUS_MODELS"))
    phrase_files = pp.phrase_files(cfg.language, args.phrase_lists, default=args.default_phrases)
    phrases = pp.load_phrases(cfg.language, phrase_files, default=False)
    wd = WorkDir(args.workdir)
    if not wd.recordings.exists():
        raise FileNotFoundError(f"{wd.recordings} not found: run `corpus ingest ... -o {args.workdir}` first")
    recs = runner.ok_recordings(wd)
    mine = [r for i, r in enumerate(recs) if i % args.num_shards == args.shard_index]
    stages = runner.stages_for(methods)
    models = ModelSet(cfg) if stages else None  # resolves what it will load; loads nothing yet
    keys = models.stage_keys(stages) if models else {}
    cache = runner.StageCache(wd, keys)
    if args.retry_failed:
        for r in mine:
            cache.forget_failure(r["recording_id"])
    result = SegmentResult(wd, methods, len(mine), sum(r["duration"] for r in mine), 0.0)
    if stages and mine:
        if args.backend == Backend.ray or args.workers != 1:
            backend = Backend(args.backend).value
            results = process_recordings(mine, stages, wd, cfg, backend=backend, workers=args.workers,
                                         address=args.ray_address, stage_keys=keys)
            label = f"segment [{backend}]"
        else:
            missing: dict[str, list[str]] = {}  # asked once per recording, before decoding it

            def needs_audio(rec: dict) -> bool:
                missing[rec["recording_id"]] = runner.missing_stages(rec, stages, cache)
                return bool(missing[rec["recording_id"]])

            results = (runner.process_recording(rec, stages, cache, models, audio,
                                                missing.pop(rec["recording_id"]))
                       for rec, audio in decode_ahead(mine, needs_audio))
            label = "segment"
        result.model_seconds, result.failed = fill_caches(results, len(mine), label)
    if args.num_shards > 1:
        record_segment_part(wd, args.shard_index, args.num_shards, methods, cfg,
                            [r["recording_id"] for r in mine], [str(f) for f in phrase_files],
                            stage_keys=keys)
        result.part = (args.shard_index, args.num_shards)
        return result
    for m in methods:
        out = assemble.write_method(wd, m, recs, cache, phrases, cfg, [str(f) for f in phrase_files],
                                    workers=assemble.assembly_workers(args.workers, len(recs)))
        result.outputs.append(MethodOutput(m, out.segments, out.drops["kept_seconds"], out.path))
    result.standard_outputs = write_standard_outputs(wd, recs, cache, stages)
    return result


def fill_caches(results: Iterable[dict], total: int, label: str) -> tuple[float, list[str]]:
    """Drain per-recording results (``runner.process_recording``'s) under a progress bar;
    returns the summed model seconds and the failed recordings as ``"<id>: <reason>"``."""
    model_s, audio_done = 0.0, 0.0
    failed: list[str] = []
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(label, total=total, info="")
        for res in results:
            model_s += res["seconds"]
            if res["computed"]:
                audio_done += res["duration"]
            if res.get("error"):
                failed.append(f"{res['recording_id']}: {res['error']}")
            wall = time.perf_counter() - t0
            bar.update(task, advance=1, info=f"{audio_done / wall:.1f}× real time" if audio_done else "cached")
    return model_s, failed
