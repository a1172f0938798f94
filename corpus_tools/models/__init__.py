"""Models: where each stage's model comes from, which model made an output, and loading it.

Every model option (``--whisper-model``, ``--align-model``, ``--diarize-model``, ``--vad-model``,
``--demucs-model``) takes a name or a local path. The modules, lowest first (each imports only
those above it):

- ``registry``: the kinds of model, the option naming each, :class:`Resolved`, the errors;
- ``fingerprint``: a cheap content hash of a file or folder of weights;
- ``locate``: find a name or path (path, models folder, package, library cache, download);
- ``defaults``: the default of each stage (``manifests/models.yaml``) and the table of them;
- ``identity``: what a cache made with a model is keyed on;
- ``checkpoint``: ``torch.save`` into the models folder, atomically and with stable bytes;
- ``ct2_to_openai``, ``random_standins``, ``campplus``, ``diarization``: converters and
  builders of the models folder's content;
- ``loaders``: ``load_*``, each model loaded once per process;
- ``prepare``: ``prepare_offline(dest)``, filling a models folder from installed packages.
"""

from .defaults import default_model, list_models, load_defaults
from .identity import identify, identity_key
from .loaders import (Diarizer, align_model_path, clear_model_cache, load_align_model, load_demucs,
                      load_diarization_pipeline, load_embedding_model, load_faster_whisper, load_openai_whisper,
                      load_silero_vad, prepare_runtime)
from .locate import locate, models_dir_path, offline, package_dir, read_manifest, resolve
from .prepare import PrepareError, default_models_dir, prepare_offline
from .registry import (KINDS, OPTION, WHISPER_ALIGNER, ModelNotFoundError, Resolved, StandInRefused,
                       is_whisper_aligner)

__all__ = [
    "KINDS", "OPTION", "WHISPER_ALIGNER", "Diarizer", "ModelNotFoundError", "PrepareError", "Resolved",
    "StandInRefused", "align_model_path", "clear_model_cache", "default_model", "default_models_dir", "identify",
    "identity_key", "is_whisper_aligner", "list_models", "load_align_model", "load_defaults", "load_demucs",
    "load_diarization_pipeline", "load_embedding_model", "load_faster_whisper", "load_openai_whisper",
    "load_silero_vad", "locate", "models_dir_path", "offline", "package_dir", "prepare_offline",
    "prepare_runtime", "read_manifest", "resolve",
]
