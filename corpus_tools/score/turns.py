"""Where the diarization turns behind a method's speaker labels are found: the ``wx-diar``
stage cache of each recording (``{"segments": [...], "turns": [[start, end, speaker], ...]}``).

The folder is looked up the way `corpus segment` names it: from the settings recorded in
``segments/<method>.drops.json`` through ``StageCache``. Caches written by a version that
named its folders differently are still found: a ``cache/wx-diar-*/`` folder whose
``settings.json`` holds the same settings, else the one folder that has the recording.
Several candidates and none matching the settings: the turns are not guessed.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from corpus_tools.manifests import WorkDir
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.runner import METHOD_STAGES, StageCache

DIAR_STAGE = "wx-diar"


def has_diarization(method: str) -> bool:
    return DIAR_STAGE in METHOD_STAGES.get(method, ())


def method_config(wd: WorkDir, method: str) -> SegmentConfig | None:
    """The segmentation settings a method's manifest was written with (None if unrecorded)."""
    path = wd.segments_dir / f"{method}.drops.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(settings, dict):
        return None
    known = {f.name for f in fields(SegmentConfig)}
    return SegmentConfig(**{k: v for k, v in settings.items() if k in known})


def turns_file(wd: WorkDir, method: str, rid: str) -> Path | None:
    """The cache file holding the diarization of recording ``rid`` for ``method``, or None."""
    if not has_diarization(method):
        return None
    cfg = method_config(wd, method)
    name = StageCache(wd, cfg or SegmentConfig()).path(DIAR_STAGE, rid).name
    if cfg is not None:
        cache = StageCache(wd, cfg)
        exact = cache.path(DIAR_STAGE, rid)
        if exact.exists():
            return exact
    candidates = sorted(p for p in (wd.root / "cache").glob(f"{DIAR_STAGE}-*/{name}") if p.is_file())
    if cfg is not None:
        want = {"stage": DIAR_STAGE, **cfg.stage_key(DIAR_STAGE)}
        same = [p for p in candidates if _settings(p.parent) == want]
        if len(same) == 1:
            return same[0]
    return candidates[0] if len(candidates) == 1 else None


def cached_turns(wd: WorkDir, method: str, rid: str) -> list[tuple[float, float, str]] | None:
    path = turns_file(wd, method, rid)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    turns = data.get("turns")
    if not isinstance(turns, list):
        return None
    return [(float(t[0]), float(t[1]), str(t[2])) for t in turns]


def _settings(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
