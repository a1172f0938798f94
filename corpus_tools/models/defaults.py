"""The model each stage uses when its option is not given, and the table of them all.

The defaults are in ``manifests/models.yaml``: ``paper`` (the models the method was measured
with) and ``offline`` (what a models folder made by ``corpus models prepare-offline`` holds).
A random-weight stand-in is never a default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from .locate import find_in_models_dir, locate, manifest_entry, models_dir_path, offline
from .registry import (KINDS, OPTION, STAGE, WHISPER_ALIGNER, ModelNotFoundError, StandInRefused, check_kind,
                       is_whisper_aligner)

log = logging.getLogger(__name__)

MODELS_YAML = Path(__file__).resolve().parents[2] / "manifests" / "models.yaml"


def load_defaults(path: str | os.PathLike = MODELS_YAML) -> dict:
    """The per-stage defaults from ``manifests/models.yaml`` (``{"paper": ..., "offline": ...}``)."""
    return yaml.safe_load(Path(path).read_text())


def _pick(table: dict, stage: str, language: str | None):
    value = table.get(stage)
    if isinstance(value, dict):                 # per-language table (align)
        return value.get(language or "", value.get("*"))
    return value


def default_model(kind: str, language: str | None = None, models_dir: str | os.PathLike | None = None,
                  warn: bool = True) -> str | None:
    """The model name used when the option is not given.

    The paper's default (manifests/models.yaml ``paper``) when it is available locally or can be
    downloaded; otherwise the ``offline`` entry: ``whisper`` for alignment (Whisper's own
    alignment; one notice naming ``--align-model``), else the models folder's entry if that
    folder has it (with a warning). A random-weight stand-in is never chosen here: when the
    offline entry is one, :class:`StandInRefused` says which option names it. Otherwise the
    paper's default (whose resolution then raises a clear error).
    """
    check_kind(kind)
    table = load_defaults()
    paper = _pick(table["paper"], STAGE[kind], language)
    if paper is not None:
        try:
            found = locate(kind, paper, models_dir)
            if found.is_local or not offline():
                return paper
        except ModelNotFoundError:
            pass
    fallback = _pick(table["offline"], STAGE[kind], language)
    missing = f"{paper} is not available here" if paper else f"no {kind} model is listed for language {language!r}"
    if kind == "align" and is_whisper_aligner(fallback):
        (log.warning if warn else log.debug)(
            "%s: %s; aligning with the Whisper model of wx-asr (--align-model whisper); give --align-model "
            "a wav2vec2 CTC model to use one", OPTION[kind], missing)
        return WHISPER_ALIGNER
    mdir = models_dir_path(models_dir)
    if fallback is not None and find_in_models_dir(kind, fallback, mdir) is not None:
        if (manifest_entry(kind, fallback, mdir) or {}).get("stand_in"):
            raise StandInRefused(
                f"{OPTION[kind]}: {missing}, and the models folder {mdir} has only {fallback!r}, a random-weight "
                f"stand-in, which is never used unless named: set {OPTION[kind]} to a real model "
                f"(or to {fallback} to run the code path with meaningless output)", reason=f"{missing}; only the "
                f"random-weight stand-in {fallback!r} is here (name it with {OPTION[kind]} to use it)")
        (log.warning if warn else log.debug)("%s: %s; using %r from the models folder", OPTION[kind], missing, fallback)
        return fallback
    return paper



def list_models(models_dir: str | os.PathLike | None = None, language: str = "nl") -> list[dict]:
    """One row per stage: the default model, where it would load from, and the path/name."""
    rows = []
    mdir = models_dir_path(models_dir)
    for kind in KINDS:
        row = {"stage": kind, "option": OPTION[kind], "stand_in": False}
        try:
            name = default_model(kind, language if kind == "align" else None, models_dir, warn=False)
        except ModelNotFoundError as exc:           # only a stand-in is here: say so, never pick it
            rows.append({**row, "model": _pick(load_defaults()["paper"], STAGE[kind], language),
                         "source": "missing", "location": exc.reason})
            continue
        if kind == "align" and is_whisper_aligner(name):
            rows.append({**row, "model": name, "source": "whisper",
                         "location": "the --whisper-model of wx-asr (cross-attention alignment, no extra model)"})
            continue
        try:
            r = locate(kind, name, models_dir)
            location = str(r.target)
            if r.source == "models-dir" and mdir is not None:
                location = os.path.relpath(r.target, mdir.resolve())
            rows.append({**row, "model": name, "source": r.source, "location": location, "stand_in": r.stand_in})
        except ModelNotFoundError as exc:
            rows.append({**row, "model": name, "source": "missing", "location": exc.reason})
    return rows
