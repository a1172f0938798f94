"""Work one stage does on a recording that a later stage would otherwise do again.

``ModelSet.recording(audio)`` opens a :class:`RecordingWork` for the recording being
segmented; the stages run inside it and share two results:

* **VAD scores.** The ``vad`` stage and WhisperX's chunking (inside ``wx-asr``) binarise the
  scores of the same pyannote VAD model on the same audio, with different thresholds and
  length caps. The scores are computed once; both binarisations are unchanged.
* **Whisper encoder outputs.** WhisperX's batched ASR encodes each 30 s chunk; the Whisper
  aligner of ``wx-align`` (``--align-model whisper``) needs the encoder output of the very
  same features (``whisper_align.chunk_features`` computes them as WhisperX does). The
  outputs are kept, on the model's device, up to :data:`ENCODINGS_BUDGET_BYTES`; chunks past
  the budget (long recordings with a large model) are encoded again by the aligner.

Outside a ``recording`` block nothing is shared and every stage computes what it needs, so a
stage run on its own (a resumed run where only one stage is missing) gives the same output.
"""

from __future__ import annotations

import numpy as np

#: encoder outputs kept per recording: Whisper base, 30 s chunk, float32 = 3 MB; large-v2 7.7 MB
#: (float16 on GPU: half that). 1 GiB keeps ~130 chunks (65 minutes of speech) of large-v2.
ENCODINGS_BUDGET_BYTES = 1 << 30


class RecordingWork:
    """What the stages of one recording computed that another stage can use."""

    def __init__(self, audio: np.ndarray):
        self.audio = audio
        self.vad_scores = None
        #: (chunk start, chunk end) of wx-asr's output -> that chunk's encoder output row
        self.encodings: dict[tuple[float, float], object] = {}

    def holds(self, waveform) -> bool:
        """Whether ``waveform`` (numpy, or a torch view ``[1, T]`` of it) is this recording's
        audio: the same memory and length, not merely equal values."""
        if hasattr(waveform, "data_ptr"):
            ptr, n = waveform.data_ptr(), waveform.shape[-1]
        else:
            arr = np.asarray(waveform)
            ptr, n = arr.__array_interface__["data"][0], arr.shape[-1]
        return ptr == self.audio.__array_interface__["data"][0] and n == self.audio.shape[-1]


class EncoderOutputs:
    """The encoder outputs of consecutive ASR batches, split into rows (one per chunk, in
    order), until the next batch would pass ``budget`` bytes. Rows are zero-copy torch views
    of CTranslate2's own output, on its device."""

    def __init__(self, budget: int = ENCODINGS_BUDGET_BYTES):
        self.budget = budget
        self.rows: list = []
        self.used = 0
        self.full = False
        self._storage: list = []  # the StorageViews the rows point into

    def add(self, encoder_output) -> None:
        if self.full:
            return
        t = storage_to_torch(encoder_output)
        size = t.numel() * t.element_size() if t is not None else 0
        # stop at the first batch that does not fit or convert: rows stay a prefix of the chunks
        if t is None or self.used + size > self.budget:
            self.full = True
            return
        self._storage.append(encoder_output)
        self.rows.extend(t.unbind(0))
        self.used += size


def storage_to_torch(storage):
    """A torch view of a CTranslate2 ``StorageView`` (CPU: the array interface; CUDA: the CUDA
    array interface), or None where neither converts."""
    import torch

    try:
        if getattr(storage, "device", "cpu") == "cuda":
            return torch.as_tensor(storage, device="cuda")
        return torch.from_numpy(np.asarray(storage))
    except (TypeError, ValueError, RuntimeError):
        return None


def torch_to_storage(rows: list):
    """Stack encoder rows into one ``StorageView`` for ``WhisperModel.find_alignment``; returns
    (storage, the stacked tensor it points into, which must outlive it)."""
    import ctranslate2
    import torch

    stacked = torch.stack(rows).contiguous()
    if stacked.device.type == "cuda":
        return ctranslate2.StorageView.from_array(stacked), stacked
    array = stacked.numpy()
    return ctranslate2.StorageView.from_array(array), array
