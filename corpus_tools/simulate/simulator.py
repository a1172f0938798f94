"""The :class:`Simulator`: one condition applied to one batch, online and offline alike.

It is the ``ShardBatchStream`` transform of ``trainer pretrain --simulate`` and the engine of
``corpus simulate``: it gets a batch as ``list[Utterance]`` and a Generator, and returns new
``Utterance`` objects (the inputs are never mutated), each with ``meta["simulation"]`` saying
what was done to it (sample offsets in samples at 16 kHz).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.data.rng import batch_rng
from corpus_tools.shards import letter_transcript
from corpus_tools.simulate.conditions import (Condition, Settings, count_selected, load_settings,
                                              parse_condition)
from corpus_tools.simulate.pools import ClipPool, SpeechPool, session_of, str_or_none
from corpus_tools.simulate.signal import active_power, mix_at_snr, place
from corpus_tools.splits import is_held_out


def _utt_id(u) -> str:
    return str((u.meta or {}).get("id", u.key))


class Simulator:
    """Apply one condition to a batch of utterances: the ``ShardBatchStream`` transform.

    ``noise`` / ``music``: clip manifests (``corpus import musan|fma``); ``stems``: a ``corpus
    stem`` output folder; ``source``: the speech pool for partners the batch cannot provide
    (a segments manifest or the training shards) — without it, concat / 2spk-mix partners come
    from the batch only and an utterance with none stays unmodified (``reason`` in its json).
    ``seed`` is used only when ``__call__`` gets no Generator (then batch k uses
    ``batch_rng(seed, k)``, k counting calls).

    ``batch_seconds`` / ``max_utterance_seconds`` are the batch budget (padding included) and
    the longest utterance of the stream the transform serves; they must match its
    ``ShardBatchStream``. A concat condition has ``length_growth = 2``: the stream forms its
    batches on half the budget, and each concatenation is cut to
    :meth:`length_cap` ``(rows)`` samples, so rows × longest stays within ``batch_seconds``.
    """

    def __init__(self, condition: str | Condition, *, noise: str | Path | None = None,
                 music: str | Path | None = None, stems: str | Path | None = None,
                 seed: int = 0, source: str | Path | Sequence[str] | None = None,
                 cache_size: int = 32, settings: Settings | None = None,
                 batch_seconds: float = 150.0, max_utterance_seconds: float = 30.0):
        self.settings = settings or load_settings()
        self.condition = parse_condition(condition, settings=self.settings)
        self.seed = int(seed)
        if batch_seconds <= 0 or max_utterance_seconds <= 0:
            raise ValueError("batch_seconds and max_utterance_seconds must be positive")
        self.batch_seconds = float(batch_seconds)
        self.max_utterance_seconds = float(max_utterance_seconds)
        self.calls = 0
        given = {"noise": noise, "music": music, "stems": stems}
        need = self.condition.option
        if need is not None and given[need] is None:
            raise ValueError(f"condition {self.condition.name} needs --{need} "
                             f"({'a clip manifest' if need != 'stems' else 'a corpus stem folder'})")
        self.interferers: ClipPool | None = None
        src = self.condition.source
        if src == "noise":
            self.interferers = ClipPool.from_manifest(noise, "noise", cache_size)
        elif src == "music":
            self.interferers = ClipPool.from_manifest(music, "music", cache_size)
        elif src in ("instr", "vocal"):
            self.interferers = ClipPool.from_stems(stems, src, cache_size)
        self.source = source
        self._pool: SpeechPool | None = None  # built on first need (indexing shards takes a while)

    @property
    def pool(self) -> SpeechPool | None:
        if self._pool is None and self.source is not None:
            self._pool = SpeechPool.from_source(self.source)
        return self._pool

    def __repr__(self) -> str:
        return f"Simulator({self.condition.name!r}, seed={self.seed})"

    @property
    def length_growth(self) -> float:
        """How much longer the condition makes an utterance at most (concat: twice)."""
        return 2.0 if self.condition.op == "concat" else 1.0

    def length_cap(self, rows: int) -> int:
        """Samples a concatenation may hold in a batch of ``rows`` utterances."""
        budget = int(self.batch_seconds * SAMPLE_RATE) // max(1, rows)
        return min(int(self.max_utterance_seconds * SAMPLE_RATE), budget)

    def select(self, utts: Sequence, rng: np.random.Generator) -> list[int]:
        """Indices (ascending) of the utterances this batch modifies."""
        eligible = [i for i, u in enumerate(utts) if not is_held_out(u.meta)]
        if self.condition.op == "none" or not eligible:
            return []
        k = count_selected(len(eligible), self.condition.percent)
        if k >= len(eligible):
            return eligible
        return sorted(int(i) for i in rng.choice(eligible, size=k, replace=False))

    def __call__(self, utts: list, rng: np.random.Generator | None = None) -> list:
        if rng is None:
            rng = batch_rng(self.seed, self.calls)
        self.calls += 1
        selected = set(self.select(utts, rng))
        out = []
        for i, u in enumerate(utts):
            meta = dict(u.meta or {})
            record: dict[str, Any] = {"condition": self.condition.name, "modified": False}
            audio = u.audio
            if is_held_out(meta):
                record["reason"] = "validation data is never degraded"
            elif i in selected:
                result = self._apply(i, utts, rng, meta, record)
                if result is not None:
                    audio = result
                    record["modified"] = "reason" not in record  # a cut without a partner
            meta["simulation"] = record
            out.append(dataclasses.replace(u, audio=audio, meta=meta))
        return out

    def _apply(self, i: int, utts: list, rng: np.random.Generator, meta: dict,
               record: dict) -> np.ndarray | None:
        c = self.condition
        speech = np.asarray(utts[i].audio, dtype=np.float32)
        n = speech.size
        record["op"] = c.op
        record["source"] = c.source
        if n == 0:
            record["reason"] = "empty utterance"
            return None
        if c.source == "speech":
            partner = self._partner(i, utts, rng, record)
            if partner is None:
                return None
            if c.op == "concat":
                return self._concat(speech, partner, len(utts), meta, record)
            record.pop("_partner_text", None)
            fitted, offset, position = place(partner, n, rng)
            power = active_power(fitted, self.settings)
            if power <= 0:
                record["reason"] = "partner is silent"
                return None
            snr = float(rng.uniform(*self.settings.snr_db))
            y, scale, gain = mix_at_snr(speech, fitted, snr, self.settings,
                                        interferer_power=power, inplace=True)
            record.update(snr_db=snr, scale=scale, gain=gain, interferer_offset=offset,
                          position=position, repeats=1)
            return y
        assert self.interferers is not None
        entry, fitted, offset, reps, power = self.interferers.draw(rng, n, self.settings)
        record.update(interferer_id=entry["id"], interferer_offset=offset, repeats=reps)
        if c.op == "sub":
            record["original_transcript"] = meta.get("transcript")
            _set_transcript(meta, "")
            return fitted.astype(np.float32, copy=False)
        snr = float(rng.uniform(*self.settings.snr_db))
        y, scale, gain = mix_at_snr(speech, fitted, snr, self.settings, interferer_power=power,
                                    inplace=True)
        record.update(snr_db=snr, scale=scale, gain=gain)
        return y

    def _concat(self, speech: np.ndarray, partner: np.ndarray, rows: int, meta: dict,
                record: dict) -> np.ndarray | None:
        """``speech`` then ``partner``, cut to the length cap of a batch of ``rows``."""
        cap = self.length_cap(rows)
        own = min(speech.size, cap)
        kept = min(partner.size, cap - own)
        record.update(boundary=own, partner_num_frames=int(partner.size),
                      partner_kept_frames=int(kept), length_cap=cap)
        partner_text = record.pop("_partner_text", None)
        if kept <= 0:
            record["reason"] = "no room for a partner under the length cap"
            if own == speech.size:
                return None
            y = speech[:own].copy()  # longer than the cap itself (offline only)
        else:
            y = np.concatenate([speech[:own], partner[:kept]])
            texts = [t for t in (meta.get("transcript"), partner_text) if t]
            _set_transcript(meta, " ".join(texts))
        meta["num_frames"] = int(y.size)
        meta["duration"] = y.size / SAMPLE_RATE
        return y

    def _partner(self, i: int, utts: list, rng: np.random.Generator,
                 record: dict) -> np.ndarray | None:
        """A partner utterance's audio by the condition's rule: batch first, then the pool."""
        rule = self.condition.partner
        meta = utts[i].meta or {}
        own = _utt_id(utts[i])
        cands = [j for j, v in enumerate(utts)
                 if j != i and not is_held_out(v.meta) and _utt_id(v) != own
                 and np.asarray(v.audio).size > 0 and _fits(rule, meta, v.meta or {})]
        if cands:
            j = cands[int(rng.integers(0, len(cands)))]
            v = utts[j]
            record.update(partner_id=_utt_id(v), partner_from="batch",
                          partner_speaker=str_or_none((v.meta or {}).get("speaker")),
                          partner_session=session_of(v.meta or {}),
                          _partner_text=(v.meta or {}).get("transcript"))
            return np.asarray(v.audio, dtype=np.float32)
        pool = self.pool
        k = pool.pick(rule, meta, {own}, rng) if pool is not None else None
        if k is None:
            record["reason"] = (f"no {rule} partner in the batch"
                                + (" or the source pool" if pool is not None else
                                   " (no source pool given)"))
            return None
        e = pool.entries[k]
        audio = pool.load(k)
        if audio.size == 0:
            record["reason"] = f"partner {e['id']} has no audio"
            return None
        record.update(partner_id=e["id"], partner_from="pool", partner_speaker=e.get("speaker"),
                      partner_session=e.get("session"), _partner_text=e.get("text"))
        return audio


def _fits(rule: str | None, meta: dict, other: dict) -> bool:
    if rule == "same-session":
        s = session_of(meta)
        return s is not None and s == session_of(other)
    if rule == "different-speaker":
        a, b = str_or_none(meta.get("speaker")), str_or_none(other.get("speaker"))
        return a is not None and b is not None and a != b
    return True


def _set_transcript(meta: dict, text: str) -> None:
    """Set the transcript, and nanow2v2's ``transcription`` when the json has one: the
    same text in the letter vocabulary, as `corpus shard` writes it."""
    meta["transcript"] = text
    if "transcription" in meta:
        meta["transcription"] = letter_transcript(text, meta.get("language"))

