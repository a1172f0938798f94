"""Segmentation in parts (``--num-shards N --shard-index I`` on array schedulers): each part
records what it ran, and :func:`merge_segment_parts` checks the parts agree and writes the
manifests an unsplit run writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from corpus_tools.atomic import write_text
from corpus_tools.segment import assemble
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment import runner
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.standard_outputs import write_standard_outputs

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
    path = part_record_path(wd, shard_index, num_shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({
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
    keys: dict[str, dict] = {}
    first: dict[str, int] = {}
    for p in sorted(parts, key=lambda p: p["shard_index"]):
        if "stage_keys" not in p:
            raise MergeError(f"part {p['shard_index']} was recorded without the models it used (an older "
                             f"`corpus segment`); rerun it")
        for stage, key in p["stage_keys"].items():
            if stage not in keys:
                keys[stage], first[stage] = key, p["shard_index"]
            elif runner.key_digest(key) != runner.key_digest(keys[stage]):
                raise MergeError(f"parts {first[stage]} and {p['shard_index']} resolved different models for "
                                 f"stage {stage} ({runner.key_differences(keys[stage], key)}); rerun the parts "
                                 f"with the same models")
    return keys


def merge_segment_parts(wd, methods: list[str] | None = None) -> list[tuple[str, int, dict]]:
    """Assemble and write the manifests of a work directory segmented in parts.

    Checks that every part 0..N-1 finished with the same settings and that every ok
    recording has its stages cached; then writes exactly what an unsplit run writes.
    Returns ``[(method, segment count, drops)]``.
    """
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
        # the merge is where a corpus split over machines comes together: every CPU assembles
        written = assemble.write_method(wd, m, recs, cache, phrases, cfg, [str(f) for f in files],
                                        workers=assemble.assembly_workers(0, len(recs)))
        out.append((m, written.segments, written.drops))
    write_standard_outputs(wd, recs, cache, stages)
    return out
