"""What the shard stream yields: decoded ``Utterance``s and zero-padded ``Batch``es of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable

import numpy as np

from corpus_tools.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch


@dataclass
class Utterance:
    """One decoded utterance."""

    key: str
    audio: np.ndarray  # float32 mono, 16 kHz
    meta: dict  # the shard's json (id, num_frames, sample_rate, duration, transcript, ...)


@dataclass
class Batch:
    """A zero-padded batch of utterances (0 rows when every utterance of it was bad)."""

    audio: torch.Tensor  # [B, T] float32, zero padded
    lengths: torch.Tensor  # [B] int64, valid samples per row
    keys: list[str]
    meta: list[dict]
    sample_rate: int = SAMPLE_RATE
    skipped: list[dict] = field(default_factory=list)  # skip events found for this batch

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def seconds(self) -> float:
        """Seconds of real (unpadded) audio in the batch."""
        return float(self.lengths.sum()) / self.sample_rate

    @property
    def padded_seconds(self) -> float:
        """Seconds the model processes: rows × longest row."""
        return float(self.audio.shape[0] * self.audio.shape[1]) / self.sample_rate

    @property
    def padding_fraction(self) -> float:
        total = self.audio.shape[0] * self.audio.shape[1]
        return 0.0 if total == 0 else 1.0 - float(self.lengths.sum()) / total

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return replace(self, audio=self.audio.pin_memory(), lengths=self.lengths.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return replace(self, audio=self.audio.to(device, non_blocking=non_blocking),
                       lengths=self.lengths.to(device, non_blocking=non_blocking))

    def utterances(self) -> list[Utterance]:
        """Back to a list of (unpadded) utterances."""
        audio = self.audio.cpu().numpy()
        return [Utterance(k, audio[i, : int(n)].copy(), m)
                for i, (k, n, m) in enumerate(zip(self.keys, self.lengths.tolist(), self.meta))]


def collate(utts: list[Utterance]) -> Batch:
    """Stack utterances into a zero-padded ``Batch``."""
    import torch  # lazy: ``corpus --help`` loads the offline simulation, which builds Utterances

    lengths = [len(u.audio) for u in utts]
    longest = max(lengths, default=0)
    audio = torch.zeros((len(utts), longest), dtype=torch.float32)
    for row, u in enumerate(utts):
        if len(u.audio):
            audio[row, : len(u.audio)] = torch.from_numpy(np.asarray(u.audio, dtype=np.float32))
    return Batch(audio, torch.tensor(lengths, dtype=torch.int64), [u.key for u in utts],
                 [u.meta for u in utts])


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Padding fraction over many batches: padded samples / all samples processed."""
    real = total = 0
    for b in batches:
        real += int(b.lengths.sum())
        total += b.audio.shape[0] * b.audio.shape[1]
    return 0.0 if total == 0 else 1.0 - real / total
