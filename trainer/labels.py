"""Transcripts as CTC targets: token ids per utterance of a batch, and a check that a shard set has labels."""

from __future__ import annotations

import torch

from corpus_tools.data.tar_index import list_shards, read_shard_records
from corpus_tools.text import normalize_text
from trainer.text import encode


def check_transcripts(src: str, limit: int = 200) -> None:
    """Fail early (on every rank alike) when the first utterances of a shard set carry no transcript."""
    seen = 0
    for path in list_shards(src):
        for rec in read_shard_records(path, on_bad=lambda event: None):  # the training stream names damage
            if (rec.meta.get("transcript") or rec.meta.get("transcription") or "").strip():
                return
            seen += 1
            if seen >= limit:
                break
        if seen >= limit:
            break
    raise ValueError(f"{src}: the first {seen} utterances have no transcript; fine-tuning needs labelled shards "
                     "(the shard json's `transcript`)")


def targets_for(batch, language: str | None, digits: str) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids per utterance and a 0/1 weight: 0 for an empty transcript or a cropped utterance."""
    targets, weights = [], []
    for meta, n in zip(batch.meta, batch.lengths.tolist()):
        raw = meta.get("transcript") or meta.get("transcription") or ""
        lang = language or meta.get("language") or meta.get("language_tag") or "en"
        ids = encode(normalize_text(raw, lang, digits=digits))
        cropped = int(meta.get("num_frames") or n) > n
        targets.append(ids)
        weights.append(0.0 if (not ids or cropped) else 1.0)
    return targets, torch.tensor(weights)
