"""Word alignment with the Whisper model that made the transcript (``--align-model whisper``).

Whisper times its own words by dynamic time warping over the cross-attention of its
alignment heads (openai-whisper's and faster-whisper's ``word_timestamps``); CTranslate2
exposes it as ``Whisper.align``. Here it times the wx-asr transcript of each WhisperX chunk:

1. the chunk's log-Mel features are computed exactly as WhisperX's batched ASR computed them
   (the chunk zero-padded to 30 s), and a batch of chunks goes through the encoder at once;
2. the chunk's text is tokenised with the language's tokenizer and aligned to its frames
   (``WhisperModel.find_alignment``); as faster-whisper's ``word_timestamps`` does, words
   longer than twice the median word duration (at most 1.4 s) are cut short at sentence
   boundaries and where the chunk starts (dynamic time warping gives a pause to the word
   after it; in a chunk whose transcript misses speech, the first word would otherwise
   stretch over all of it), and punctuation is attached to its word;
3. word times are offset by the chunk start, and the chunk is split into sentences the way
   ``whisperx.align`` splits it (NLTK Punkt of the language, English for others).

The result has the shape of the CTC path's output, so every later stage is unchanged:
``[{"start", "end", "text", "words": [{"word", "start", "end", "score"}]}]``, with ``score``
the mean probability of the word's tokens. No model beyond Whisper is needed, so it works for
every language Whisper transcribes.
"""

from __future__ import annotations

import inspect
from typing import Iterable

import numpy as np

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.segment.reuse import torch_to_storage

HOP = 160                 # Whisper's mel hop: 100 frames per second
N_FRAMES = 3000           # one 30 s window
MAX_POSITIONS = 448       # Whisper's decoder context


def _punctuation() -> tuple[str, str]:
    """faster-whisper's defaults for the punctuation merged into the neighbouring word."""
    from faster_whisper import WhisperModel

    params = inspect.signature(WhisperModel.transcribe).parameters
    return params["prepend_punctuations"].default, params["append_punctuations"].default


def sentence_splitter(language: str):
    """The sentence splitter ``whisperx.align`` uses for ``language`` (Punkt, from NLTK data);
    an untrained Punkt splitter when the data is not installed (no download)."""
    from nltk.data import load
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    from whisperx.utils import PUNKT_LANGUAGES

    try:
        return load(f"tokenizers/punkt_tab/{PUNKT_LANGUAGES.get(language, 'english')}.pickle")
    except LookupError:
        return PunktSentenceTokenizer()


def chunk_features(audio: np.ndarray, start: float, end: float, n_mels: int) -> tuple[np.ndarray, int]:
    """The chunk's log-Mel features as WhisperX's ASR computed them, and its unpadded frame count."""
    from whisperx.audio import N_SAMPLES, log_mel_spectrogram

    piece = audio[int(start * SAMPLE_RATE): int(end * SAMPLE_RATE)][:N_SAMPLES]
    feats = log_mel_spectrogram(np.ascontiguousarray(piece, dtype=np.float32), n_mels=n_mels,
                                padding=N_SAMPLES - len(piece))
    return feats.numpy()[:, :N_FRAMES], chunk_frames(audio, start, end)


def chunk_frames(audio: np.ndarray, start: float, end: float) -> int:
    """The chunk's unpadded mel frame count (at most one 30 s window)."""
    n = len(range(len(audio))[int(start * SAMPLE_RATE): int(end * SAMPLE_RATE)])
    return max(1, min(N_FRAMES, n // HOP))


def align_chunks(model, audio: np.ndarray, chunks: Iterable[dict], language: str,
                 batch_size: int = 8, encoded: dict | None = None) -> list[list[dict]]:
    """Per chunk (``{"start", "end", "text"}``), its words ``{"word", "start", "end", "score"}``
    in seconds of the recording. ``model``: a ``faster_whisper.WhisperModel``. ``encoded``:
    ``(start, end) -> encoder output row`` of chunks the ASR already encoded
    (``reuse.EncoderOutputs``); a batch whose rows are all there is not encoded again."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations

    chunks = list(chunks)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
    n_mels = model.feat_kwargs.get("feature_size") or 80
    prepend, append = _punctuation()
    out: list[list[dict]] = [[] for _ in chunks]
    todo = [i for i, c in enumerate(chunks) if (c.get("text") or "").strip() and c["end"] > c["start"]]
    for b in range(0, len(todo), max(1, batch_size)):
        batch = todo[b: b + max(1, batch_size)]
        frames = [chunk_frames(audio, chunks[i]["start"], chunks[i]["end"]) for i in batch]
        spans = [(chunks[i]["start"], chunks[i]["end"]) for i in batch]
        if encoded and all(span in encoded for span in spans):
            encoder_output, _keep_alive = torch_to_storage([encoded[span] for span in spans])
        else:
            encoder_output = model.encode(np.stack([chunk_features(audio, *span, n_mels)[0] for span in spans]))
        # the decoder holds 448 positions: start sequence, text, end of text
        limit = MAX_POSITIONS - len(tokenizer.sot_sequence) - 1
        tokens = [tokenizer.encode(" " + chunks[i]["text"].strip())[:limit] for i in batch]
        for i, alignment in zip(batch, model.find_alignment(tokenizer, tokens, encoder_output, frames)):
            max_duration = truncate_long_words(alignment)
            merge_punctuations(alignment, prepend, append)
            timed = [w for w in alignment if w["word"]]
            if timed and timed[0]["end"] - timed[0]["start"] > max_duration > 0:  # the chunk starts after a pause
                timed[0]["start"] = timed[0]["end"] - max_duration
            t0 = float(chunks[i]["start"])
            out[i] = [{"word": w["word"], "start": round(t0 + float(w["start"]), 3),
                       "end": round(t0 + float(w["end"]), 3), "score": round(float(w["probability"]), 3)}
                      for w in alignment if w["word"]]
    return out


def truncate_long_words(alignment: list[dict]) -> float:
    """faster-whisper's rule for words at sentence boundaries (``add_word_timestamps``): a
    word longer than ``max_duration`` (twice the median word duration, at most 1.4 s) that is
    a sentence-end mark is cut to ``max_duration`` from its start, and one that follows a
    sentence-end mark to ``max_duration`` before its end. Returns ``max_duration`` (0 when no
    word has a duration)."""
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    if len(durations) == 0:
        return 0.0
    max_duration = 2 * min(0.7, float(np.median(durations)))
    marks = ".。!！?？"
    for i in range(1, len(alignment)):
        w = alignment[i]
        if w["end"] - w["start"] > max_duration:
            if w["word"] in marks:
                w["end"] = w["start"] + max_duration
            elif alignment[i - 1]["word"] in marks:
                w["start"] = w["end"] - max_duration
    return max_duration


def split_sentences(text: str, words: list[dict], splitter) -> list[dict]:
    """The chunk's words grouped into the sentences of ``text``, as ``whisperx.align`` groups
    them: a sentence starts at its first word and ends at its last; sentences that end up with
    the same start and end become one. Word text is stripped; a word belongs to the sentence
    holding its first character."""
    offsets, cursor = [], 0
    for w in words:  # each word's first character in ``text`` (words come in text order)
        token = w["word"].strip()
        at = text.find(token, cursor) if token else -1
        offsets.append(at if at >= 0 else cursor)
        cursor = at + len(token) if at >= 0 else cursor
    sentences: list[dict] = []
    for s0, s1 in splitter.span_tokenize(text):
        mine = [{**w, "word": w["word"].strip()} for w, at in zip(words, offsets) if s0 <= at < s1]
        if not mine:
            continue
        sent = {"start": min(w["start"] for w in mine), "end": max(w["end"] for w in mine),
                "text": text[s0:s1].strip(), "words": mine}
        prev = sentences[-1] if sentences else None
        if prev is not None and (prev["start"], prev["end"]) == (sent["start"], sent["end"]):
            prev["text"] = f"{prev['text']} {sent['text']}"
            prev["words"] = prev["words"] + mine
        else:
            sentences.append(sent)
    return sentences
