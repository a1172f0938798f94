"""Which model made an output: the identity recorded next to it and the key its cache uses.

Files found on this machine are known by their content (:mod:`corpus_tools.models.fingerprint`);
a model the library manages is known by what is published under its name.
"""

from __future__ import annotations

from pathlib import Path

from .fingerprint import fingerprint
from .registry import LOCAL_SOURCES, Resolved


def identify(r: Resolved) -> dict:
    """Which model ``r`` is, without loading it (recorded next to the outputs it makes).

    Files found here (a path, the models folder, a file bundled in a package) are known by
    their content, ``fingerprint`` (see :mod:`corpus_tools.models.fingerprint`). A model the library
    manages (in its own cache, or downloaded by name) is known by what is published under
    the name, ``published``: the Hugging Face repo and commit, the checksum in openai-whisper's
    download address, or the torchaudio bundle name. So a first run that downloads a model
    and the rerun that finds it in the library's cache share their caches.
    """
    local = r.source in LOCAL_SOURCES
    return {"name": r.name, "kind": r.kind, "source": r.source, "target": str(r.target), "stand_in": r.stand_in,
            "fingerprint": fingerprint(r.target) if local else None,
            "published": None if local else _published(r)}


def identity_key(identity: dict) -> dict:
    """The part of an :func:`identify` record that decides a model's outputs: its files'
    fingerprint (not their place or name: a moved models folder keeps its caches), else what
    the library publishes under its name."""
    if identity.get("fingerprint"):
        return {"fingerprint": identity["fingerprint"]}
    return {"published": identity.get("published") or f"{identity.get('source')}:{identity.get('name')}"}


def _published(r: Resolved) -> str:
    name = r.name
    if r.kind == "whisper-openai":
        try:
            import whisper

            url = getattr(whisper, "_MODELS", {}).get(name, "")
        except ImportError:
            url = ""
        checksum = url.rstrip("/").split("/")[-2] if url.count("/") >= 2 else ""
        return f"whisper:{name}@{checksum}" if checksum else f"whisper:{name}"
    if r.kind == "align" and name.isupper():
        return f"torchaudio:{name}"
    if r.kind == "demucs":
        return f"demucs:{name}"
    repo = name
    if r.kind == "whisper-ct2":
        try:
            from faster_whisper.utils import _MODELS as FW_MODELS
        except ImportError:
            FW_MODELS = {}
        repo = FW_MODELS.get(name, name)
    target = Path(str(r.target))
    revision = (target.name if r.source == "cache" and target.parent.name == "snapshots"
                else _hub_revision(repo) if r.source == "download" else None)
    return f"hf:{repo}@{revision}" if revision else f"hf:{repo}"


_HUB_REVISIONS: dict[str, str | None] = {}


def _hub_revision(repo: str) -> str | None:
    """The commit the hub serves for ``repo`` now (what a download by name fetches)."""
    if repo not in _HUB_REVISIONS:
        try:
            from huggingface_hub import HfApi

            _HUB_REVISIONS[repo] = HfApi().model_info(repo, timeout=10).sha
        except Exception:                 # no network, gated, rate-limited: known by name only
            _HUB_REVISIONS[repo] = None
    return _HUB_REVISIONS[repo]
