"""The vocabulary of models: the kinds, the option that names each, and what a lookup returns.

Every model option (``--whisper-model``, ``--align-model``, ``--diarize-model``, ``--vad-model``,
``--demucs-model``) takes a *name* or a *local path* of one of :data:`KINDS`. Finding it is
:mod:`corpus_tools.models.locate`; the default for each kind is
:mod:`corpus_tools.models.defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = ("whisper-ct2", "whisper-openai", "vad", "segmentation", "embedding", "diarization", "align", "demucs")

#: the CLI option that chooses a model of each kind
OPTION = {
    "whisper-ct2": "--whisper-model", "whisper-openai": "--whisper-model", "vad": "--vad-model",
    "segmentation": "--vad-model", "embedding": "--diarize-model", "diarization": "--diarize-model",
    "align": "--align-model", "demucs": "--demucs-model",
}
#: key in manifests/models.yaml
STAGE = {
    "whisper-ct2": "whisper", "whisper-openai": "whisper", "vad": "vad", "segmentation": "segmentation",
    "embedding": "embedding", "diarization": "diarization", "align": "align", "demucs": "demucs",
}

#: ``--align-model whisper``: align with the Whisper model that transcribed (no model of its own)
WHISPER_ALIGNER = "whisper"

#: the models folder's own list of what it holds (written by ``corpus models prepare-offline``)
MANIFEST_NAME = "models.json"
SOURCES = ("path", "models-dir", "cache", "package", "download")
#: sources whose files are on this machine, so a model found there is known by its content
LOCAL_SOURCES = ("path", "models-dir", "package")


class ModelNotFoundError(FileNotFoundError):
    """A model given by name or path cannot be found (and will not be downloaded).

    ``reason`` is the short cause; ``str(exc)`` is the full message naming the option to set.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message

    def __str__(self) -> str:
        return self.args[0]


class StandInRefused(ModelNotFoundError):
    """The default model is missing and the only candidate is a random-weight stand-in."""


@dataclass
class Resolved:
    """Where a model comes from. ``target`` is what the library's loader is given."""

    kind: str
    name: str                   # what was asked for
    target: Path | str          # a local path, or a plain name to download
    source: str                 # one of SOURCES
    stand_in: bool = False      # a random-weight stand-in (see corpus_tools.models.random_standins)
    note: str = ""

    @property
    def is_local(self) -> bool:
        return self.source != "download"


def is_whisper_aligner(name: str | None) -> bool:
    """Whether an ``--align-model`` value asks for Whisper's own alignment."""
    return name is not None and str(name).strip().lower() == WHISPER_ALIGNER


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
