"""Where the diarization turns behind a method's speaker labels are found: the ``wx-diar``
stage cache of each recording (``{"segments": [...], "turns": [[start, end, speaker], ...]}``).

`corpus segment` writes that cache to ``cache/wx-diar-<key hash>/<recording>.json`` and
records beside it, in ``settings.json``, what the hash stands for; the method's
``segments/<method>.drops.json`` records the settings (its options and what its stages' keys
add) and, where the runner keys caches on models, the models it was made with. The folder
used is the one whose ``settings.json`` agrees with the method's ``drops.json`` on every
setting both name and on the models; of several, the one agreeing on the most settings. This
does not recompute the hash, so it keeps working when the way the key is hashed changes.
When no folder agrees, the one folder that has the recording is used; with several and none
agreeing, the turns are not guessed (the recording is left out of DER/JER, with a note).
"""

from __future__ import annotations

import json
from pathlib import Path

from corpus_tools.manifests import WorkDir
from corpus_tools.segment.runner import METHOD_STAGES, safe_id

DIAR_STAGE = "wx-diar"


def has_diarization(method: str) -> bool:
    return DIAR_STAGE in METHOD_STAGES.get(method, ())


def turns_file(wd: WorkDir, method: str, rid: str) -> Path | None:
    """The cache file holding the diarization of recording ``rid`` for ``method``, or None."""
    if not has_diarization(method):
        return None
    candidates = sorted(p for p in (wd.root / "cache").glob(f"{DIAR_STAGE}-*/{safe_id(rid)}.json") if p.is_file())
    drops = _read_json(wd.segments_dir / f"{method}.drops.json") or {}
    agreement = {p: _agreement(_read_json(p.parent / "settings.json"), drops) for p in candidates}
    best = max((n for n in agreement.values() if n is not None), default=None)
    agreeing = [p for p, n in agreement.items() if n is not None and n == best]
    if len(agreeing) == 1:
        return agreeing[0]
    return candidates[0] if len(candidates) == 1 else None


def _agreement(folder: dict | None, drops: dict) -> int | None:
    """How many settings a cache folder's settings.json shares with what a method's
    drops.json recorded, all equal; None when one differs. A folder from before a stage key
    gained a setting (``speaker_crop_s``) agrees on fewer than the folder the method used."""
    settings = drops.get("settings")
    if not isinstance(folder, dict) or not isinstance(settings, dict) or folder.get("stage") != DIAR_STAGE:
        return None
    if "models" in folder and "models" in drops and folder["models"] != drops["models"]:
        return None
    shared = [k for k in folder if k not in ("stage", "models") and k in settings]
    return len(shared) if all(folder[k] == settings[k] for k in shared) else None


def cached_turns(wd: WorkDir, method: str, rid: str) -> list[tuple[float, float, str]] | None:
    path = turns_file(wd, method, rid)
    data = _read_json(path) if path is not None else None
    turns = data.get("turns") if isinstance(data, dict) else None
    if not isinstance(turns, list):
        return None
    return [(float(t[0]), float(t[1]), str(t[2])) for t in turns]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
