"""The segmentation stages and methods: run the model stages once per recording (cached),
derive all ten methods from the caches. The stage's entry point is ``segment.run.run_segment``.

Model work is organised as *stages* whose outputs are cached per recording:

    seq        → (no model)
    sad        → vad
    w-raw      → whisper                 (one Whisper pass serves w-raw, w-pp-1s, w-pp-3s)
    w-pp-*     → vad, whisper
    wx-asr     → wx-asr
    wx-align   → vad, wx-asr → wx-align
    wx-diar*   → vad, wx-asr → wx-align → wx-diar

The methods cut at word times (w-pp-*, wx-align, wx-diar*) keep only words inside speech,
from the ``vad`` stage (``postprocess.keep_words_in_speech``).

Each stage output is written atomically to ``cache/<stage>-<key>/<recording>.json`` as soon
as it exists, where ``<key>`` hashes the settings the stage depends on and the identity of
every model it uses, as resolved before anything is loaded (``backends.resolve_stage_keys``):
the files' fingerprint, or what the library publishes under a name it downloads. The key of
``wx-align`` contains that of ``wx-asr``, and ``wx-diar`` that of ``wx-align``, so a new
aligner recomputes ``wx-align`` and ``wx-diar`` but not ``wx-asr``. Each folder's
``settings.json`` records the key with the models' names, sources and paths. A rerun (or a
run after ``kill -9``) therefore recomputes only recordings in flight and stages whose model
changed, and asking for ``wx-diar-3s`` after ``wx-diar`` costs no inference. Manifests are
then assembled from the caches by pure functions and written atomically (``segment.assemble``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import polars as pl

from corpus_tools.atomic import write_text
from corpus_tools.audio import load_audio
from corpus_tools.manifests import WorkDir, read_recordings
from corpus_tools.models import identity_key
from corpus_tools.segment import backends as be

METHODS = ("seq", "sad", "w-raw", "w-pp-1s", "w-pp-3s", "wx-asr", "wx-align", "wx-diar",
           "wx-diar-1s", "wx-diar-3s")
STAGE_ORDER = ("vad", "whisper", "wx-asr", "wx-align", "wx-diar")
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "seq": (),
    "sad": ("vad",),
    "w-raw": ("whisper",), "w-pp-1s": ("vad", "whisper"), "w-pp-3s": ("vad", "whisper"),
    "wx-asr": ("wx-asr",),
    "wx-align": ("vad", "wx-asr", "wx-align"),
    "wx-diar": ("vad", "wx-asr", "wx-align", "wx-diar"),
    "wx-diar-1s": ("vad", "wx-asr", "wx-align", "wx-diar"),
    "wx-diar-3s": ("vad", "wx-asr", "wx-align", "wx-diar"),
}


def parse_methods(spec: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in spec:
        for m in item.split(","):
            m = m.strip()
            if not m:
                continue
            if m == "all":
                out.extend(METHODS)
            elif m in METHODS:
                out.append(m)
            else:
                raise ValueError(f"unknown method {m!r}; valid: {', '.join(METHODS)}, all")
    return sorted(set(out), key=METHODS.index)


def stages_for(methods: list[str]) -> list[str]:
    needed = {s for m in methods for s in METHOD_STAGES[m]}
    return [s for s in STAGE_ORDER if s in needed]


# -- per-recording stage cache ----------------------------------------------------------


class StageCache:
    """Stage outputs per recording, in one folder per stage and key (``keys``: stage ->
    ``SegmentConfig.stage_key`` record, as ``backends.resolve_stage_keys`` returns them)."""

    def __init__(self, workdir: WorkDir, keys: dict[str, dict]):
        self.wd, self.keys = workdir, {"error": {}, **keys}

    def key(self, stage: str) -> dict:
        if stage not in self.keys:
            raise KeyError(f"stage {stage!r} has no resolved cache key (see backends.resolve_stage_keys)")
        return self.keys[stage]

    def dir(self, stage: str) -> Path:
        return self.wd.cache_dir(f"{stage}-{key_digest(self.key(stage))}")

    def path(self, stage: str, rid: str) -> Path:
        return self.dir(stage) / f"{safe_id(rid)}.json"

    def get(self, stage: str, rid: str) -> dict | None:
        p = self.path(stage, rid)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            return None  # never trust a damaged cache entry: recompute it

    def forget_failure(self, rid: str) -> None:
        """Let a recording whose decode failed be tried again (``--retry-failed``)."""
        self.path("error", rid).unlink(missing_ok=True)

    def put(self, stage: str, rid: str, data: dict) -> None:
        p = self.path(stage, rid)
        if not (p.parent / "settings.json").exists():
            write_text(p.parent / "settings.json", json.dumps(
                {"stage": stage, **self.key(stage)}, indent=1, ensure_ascii=False))
        write_text(p, json.dumps(data, ensure_ascii=False))


def key_digest(key: dict) -> str:
    """The folder suffix of a stage key: a hash of its settings and of what decides each
    model's outputs (``models.identity_key``: content, not place), so the same files found
    elsewhere share the cache and changed files get a new one."""
    hashed = {k: v for k, v in key.items() if k != "models"}
    if "models" in key:
        hashed["models"] = {kind: identity_key(ident) for kind, ident in key["models"].items()}
    return hashlib.sha1(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]


def key_differences(a: dict, b: dict) -> str:
    """What differs between two keys of one stage, for error messages."""
    def show(ident: dict | None) -> str:
        if ident is None:
            return "none"
        k = identity_key(ident)
        return f"{ident.get('name')} ({k.get('fingerprint', k.get('published'))[:19]})"

    ma, mb = a.get("models", {}), b.get("models", {})
    models = [f"{kind} {show(ma.get(kind))} vs {show(mb.get(kind))}" for kind in sorted(set(ma) | set(mb))
              if (ma.get(kind) and identity_key(ma[kind])) != (mb.get(kind) and identity_key(mb[kind]))]
    settings = [k for k in sorted(set(a) | set(b)) if k != "models" and a.get(k) != b.get(k)]
    return "; ".join(models + ([f"settings {', '.join(settings)}"] if settings else [])) or "nothing"


def safe_id(rid: str) -> str:
    """``rid`` as a file name and a space-free token (cache files, segment ids, RTTM/CTM)."""
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", rid)
    if safe != rid:
        # "Journaal 20:00" and "Journaal 20_00" must not share a cache file or segment ids
        safe = f"{safe}-{hashlib.sha1(rid.encode()).hexdigest()[:8]}"
    return safe


def missing_stages(rec: dict, stages: list[str], cache: StageCache) -> list[str]:
    """The stages of ``rec`` still to compute (none for a recording whose decode failed)."""
    rid = rec["recording_id"]
    if cache.get("error", rid) is not None:
        return []
    return [s for s in stages if cache.get(s, rid) is None]


def process_recording(rec: dict, stages: list[str], cache: StageCache, models,
                      audio: Callable[[], np.ndarray] | None = None,
                      missing: list[str] | None = None) -> dict:
    """Compute the missing stages for one recording; returns ``{"recording_id", "duration",
    "seconds": model seconds, "computed": [stages], "error": reason (if it failed)}``.
    ``audio``: returns the decoded recording (``prefetch.decode_ahead`` decodes it while the
    previous recording is in the models); default: decode it here. ``missing``: what
    :func:`missing_stages` returned for it, when the caller already asked (each check parses
    the recording's cache entries)."""
    rid = rec["recording_id"]
    res = {"recording_id": rid, "duration": rec["duration"], "seconds": 0.0, "computed": []}
    error = cache.get("error", rid)
    if error is not None:
        return {**res, "error": error["reason"]}
    if missing is None:
        missing = missing_stages(rec, stages, cache)
    if not missing:
        return res
    t0 = time.perf_counter()
    try:
        samples = audio() if audio is not None else load_audio(rec["path"])
    except Exception as exc:
        cache.put("error", rid, {"reason": f"decode failed: {exc}"})
        return {**res, "error": str(exc)}
    if len(samples) == 0:  # e.g. a header-only file ingested with --no-verify-decode
        cache.put("error", rid, {"reason": "decode failed: no audio samples"})
        return {**res, "error": "no audio samples"}
    done: list[str] = []
    with models.recording(samples) if models is not None else nullcontext():
        for stage in missing:
            cache.put(stage, rid, run_stage(stage, models, samples, cache, rid))
            done.append(stage)
    return {**res, "seconds": time.perf_counter() - t0, "computed": done}


def run_stage(stage: str, models, audio: np.ndarray, cache: StageCache, rid: str) -> dict:
    """One stage's output for one recording (the stage it builds on is in the cache)."""
    if stage == "vad":
        return be.run_vad(models, audio)
    if stage == "whisper":
        return be.run_whisper(models, audio)
    if stage == "wx-asr":
        return be.run_wx_asr(models, audio)
    if stage == "wx-align":
        return be.run_wx_align(models, audio, cache.get("wx-asr", rid))
    if stage == "wx-diar":
        return be.run_wx_diar(models, audio, cache.get("wx-align", rid))
    raise KeyError(stage)


# -- reading recordings, writing manifests ---------------------------------------------


def ok_recordings(wd: WorkDir) -> list[dict]:
    df = read_recordings(wd.recordings)
    return df.filter(pl.col("status") == "ok").sort("recording_id").to_dicts()

