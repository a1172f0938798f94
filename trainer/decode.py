"""Decoding CTC output and scoring it: greedy letters, 4-gram LM beam search, WER/CER.

* ``greedy_decode``: arg-max per frame, merge repeats, drop blanks, ``|`` → space.
* ``BeamSearchDecoder``: lexicon-constrained word decoding with an n-gram LM through
  ``torchaudio.models.decoder.ctc_decoder`` (flashlight-text; KenLM reads ARPA or binary LMs).
  Thesis settings by default: beam size and beam threshold 50, LM weight 2, word insertion
  score 0. Without
  ``--lexicon``, the lexicon is the LM's unigrams (ARPA only), each word spelled letter by
  letter and closed by the word separator, e.g. ``zo'n	z o ' n |``; words with characters
  outside the vocabulary are left out.
* ``error_rates``: corpus-level WER and CER with jiwer (errors summed over utterances, divided by
  the reference words / characters), the same number ``jiwer.wer(refs, hyps)`` gives.
* ``evaluate``: all of it over one or more shard sets, writing a JSONL of hypotheses and a
  summary table (one row per set). Bad utterances and truncated shards are skipped, named and
  counted per set (``bad_utterances``, ``bad_shards``); past ``max_bad_fraction`` the
  evaluation stops (``corpus_tools.bad_data``).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from corpus_tools.atomic import atomic_path, write_text
from corpus_tools.bad_data import DEFAULT_MAX_BAD_FRACTION, BadDataTally
from corpus_tools.data.stream import ShardBatchStream, make_loader
from corpus_tools.progress import counting
from trainer.ctc import load_ctc_model
from corpus_tools.text import normalize_text
from trainer.text import BLANK, VOCAB, WORD_SEPARATOR, ctc_collapse, ids_to_text

UNK_WORD = "<unk>"
# "a beam size and threshold of 50" (thesis §5.3.2): the threshold is set here, not left to
# torchaudio's default.
BEAM_THRESHOLD = 50.0
ARPA_SPECIAL = {"<s>", "</s>", "<unk>", "<UNK>"}


# -- greedy ----------------------------------------------------------------------------------


def greedy_decode(logits: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> list[str]:
    """Best path per utterance of ``logits`` [B, T, V] (only the first ``frame_lengths[b]`` frames)."""
    best = logits.argmax(dim=-1).cpu()
    lengths = [best.shape[1]] * best.shape[0] if frame_lengths is None else frame_lengths.cpu().tolist()
    return [ids_to_text(ctc_collapse(row[: int(n)].tolist())) for row, n in zip(best, lengths)]


# -- lexicon ---------------------------------------------------------------------------------


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA LM's ``\\1-grams:`` section (without ``<s>``, ``</s>``, ``<unk>``)."""
    words: list[str] = []
    in_unigrams = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:  # the next section starts
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in ARPA_SPECIAL:
                    words.append(parts[1])
    if not words:
        raise ValueError(f"{path}: no \\1-grams: section with words (is it an ARPA file?)")
    return words


def spell(word: str, vocab: Sequence[str] = VOCAB) -> list[str] | None:
    """The lexicon spelling of ``word`` (its letters then the word separator), or None if a
    character is not in ``vocab``."""
    allowed = set(vocab) - {BLANK, WORD_SEPARATOR}
    if not word or any(c not in allowed for c in word):
        return None
    return [*word, WORD_SEPARATOR]


def write_lexicon(words: Iterable[str], path: str | Path, vocab: Sequence[str] = VOCAB) -> tuple[Path, int, int]:
    """Write a flashlight lexicon (``word<TAB>w o r d |``); returns (path, words kept, words skipped)."""
    path = Path(path)
    kept = skipped = 0
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as f:
        for w in words:
            if w in seen:
                continue
            seen.add(w)
            spelling = spell(w, vocab)
            if spelling is None:
                skipped += 1
                continue
            f.write(f"{w}\t{' '.join(spelling)}\n")
            kept += 1
    if kept == 0:
        raise ValueError(f"no word of the lexicon fits the vocabulary {''.join(v for v in vocab if len(v) == 1)}")
    return path, kept, skipped


def is_arpa(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"\\data\\" in head


class BeamSearchDecoder:
    """Lexicon + n-gram LM beam search over CTC log-probabilities (torchaudio / flashlight-text)."""

    def __init__(self, lm: str | Path, lexicon: str | Path | None = None, *, beam_size: int = 50,
                 lm_weight: float = 2.0, word_score: float = 0.0, vocab: Sequence[str] = VOCAB,
                 workdir: str | Path | None = None):
        from torchaudio.models.decoder import ctc_decoder

        lm = Path(lm)
        if not lm.exists():
            raise FileNotFoundError(f"language model not found: {lm}")
        self.skipped_words = 0
        if lexicon is None:
            if not is_arpa(lm):
                raise ValueError(f"{lm} is a binary LM: pass --lexicon (the unigram list is only read from ARPA files)")
            self._tmp = tempfile.TemporaryDirectory(prefix="lexicon-") if workdir is None else None
            folder = Path(workdir) if workdir is not None else Path(self._tmp.name)
            folder.mkdir(parents=True, exist_ok=True)
            lexicon, _, self.skipped_words = write_lexicon(arpa_unigrams(lm), folder / "lexicon.txt", vocab)
        elif not Path(lexicon).exists():
            raise FileNotFoundError(f"lexicon not found: {lexicon}")
        self.lexicon = Path(lexicon)
        self.vocab = list(vocab)
        self.decoder = ctc_decoder(lexicon=str(self.lexicon), tokens=self.vocab, lm=str(lm), nbest=1,
                                   beam_size=beam_size, beam_threshold=BEAM_THRESHOLD, lm_weight=lm_weight,
                                   word_score=word_score,
                                   unk_score=-math.inf, sil_score=0.0, log_add=False, blank_token=BLANK,
                                   sil_token=WORD_SEPARATOR, unk_word=UNK_WORD)

    def __call__(self, logits: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> list[str]:
        """Best word sequence per utterance of ``logits`` [B, T, V] (any float dtype, any device)."""
        emissions = torch.log_softmax(logits.detach().float(), dim=-1).cpu().contiguous()
        if frame_lengths is not None:
            frame_lengths = frame_lengths.detach().cpu().to(torch.int32)
        results = self.decoder(emissions, frame_lengths)
        return [" ".join(w for w in hyps[0].words if w) if hyps else "" for hyps in results]


# -- scoring ---------------------------------------------------------------------------------


@dataclass
class ErrorRates:
    wer: float
    cer: float
    ref_words: int
    word_errors: int
    ref_chars: int
    char_errors: int
    utterances: int


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRates:
    """Corpus WER/CER with jiwer (``jiwer.wer(refs, hyps)``); NaN when the references are empty."""
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return ErrorRates(math.nan, math.nan, 0, 0, 0, 0, 0)
    w = jiwer.process_words(list(refs), list(hyps))
    c = jiwer.process_characters(list(refs), list(hyps))
    ref_words = w.hits + w.substitutions + w.deletions
    ref_chars = c.hits + c.substitutions + c.deletions
    word_errors = w.substitutions + w.deletions + w.insertions
    char_errors = c.substitutions + c.deletions + c.insertions
    return ErrorRates(w.wer if ref_words else math.nan, c.cer if ref_chars else math.nan, ref_words, word_errors,
                      ref_chars, char_errors, len(refs))


# -- evaluation over shard sets -------------------------------------------------------------


def set_names(sources: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path) per ``--shards`` value: ``NAME=PATH`` or the folder name (parents added on clashes)."""
    named: list[tuple[str, str]] = []
    for src in sources:
        if "=" in src and not Path(src).exists():
            name, path = src.split("=", 1)
            named.append((name, path))
        else:
            p = Path(src.rstrip("/"))
            named.append((p.stem if p.is_file() else p.name, src))
    names = [n for n, _ in named]
    out = []
    for (name, path) in named:
        if names.count(name) > 1:
            p = Path(path.rstrip("/"))
            name = f"{p.parent.name}/{name}" if p.parent.name else name
        out.append((name, path))
    return out


def _batches(shards: str, batch_seconds: float):
    """One pass over a shard set in file order (no shuffling, no cropping of long utterances)."""
    stream = ShardBatchStream(shards, batch_seconds, rank=0, world_size=1, infinite=False, shuffle=False,
                              max_utterance_seconds=max(batch_seconds, 1e9), max_span_seconds=None)
    return make_loader(stream, 0)


def _reference(meta: dict, language: str | None, digits: str) -> tuple[str, str]:
    raw = meta.get("transcript") or meta.get("transcription") or meta.get("text") or ""
    lang = language or meta.get("language") or meta.get("language_tag") or "en"
    return raw, normalize_text(raw, lang, digits=digits)


def evaluate(ckpt: str | Path, shard_sets: Sequence[str], *, lm: str | Path | None = None,
             lexicon: str | Path | None = None, out_dir: str | Path | None = None, batch_seconds: float = 100.0,
             beam_size: int = 50, lm_weight: float = 2.0, word_score: float = 0.0, language: str | None = None,
             digits: str = "spell", device: str | None = None, progress: bool = True, model=None,
             max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, trust: bool = False) -> list[dict]:
    """Decode every utterance of each shard set; returns one summary row per set.

    Writes ``OUT/hypotheses.jsonl`` (set, key, raw and normalised reference, greedy and LM
    hypotheses) and ``OUT/summary.{json,csv,md}`` when ``out_dir`` is given. References are the
    shards' transcripts normalised like the training targets (``language`` overrides the
    shards' language field). ``model`` (a ``Wav2Vec2ForCTC``) skips loading ``ckpt``; ``trust``
    loads a checkpoint that needs more than plain types (``trainer.safe_load``).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model = load_ctc_model(ckpt, map_location=dev, trust=trust)
    model = model.to(dev).eval()
    beam = None
    if lm is not None:
        beam = BeamSearchDecoder(lm, lexicon, beam_size=beam_size, lm_weight=lm_weight, word_score=word_score,
                                 vocab=model.vocab, workdir=None if out_dir is None else Path(out_dir))
    out = Path(out_dir) if out_dir is not None else None
    jsonl = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jsonl = open(out / "hypotheses.jsonl", "w", encoding="utf-8")
    use_bf16 = dev.type == "cuda"
    rows = []
    try:
        for name, path in set_names(list(shard_sets)):
            refs, greedy, lm_hyps, seconds = [], [], [], 0.0
            bad = BadDataTally(max_bad_fraction)
            with counting(f"decoding {name}", "utt", enabled=progress) as advance:
                for batch in _batches(path, batch_seconds):
                    bad.add(*bad.count(len(batch), batch.skipped))
                    bad.check()
                    if len(batch) == 0:
                        continue
                    seconds += batch.seconds
                    audio, lengths = batch.audio.to(dev), batch.lengths.to(dev)
                    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                        o = model(audio, lengths)
                    logits, frame_lengths = o["logits"].float(), o["frame_lengths"]
                    g = greedy_decode(logits, frame_lengths)
                    b = beam(logits, frame_lengths) if beam is not None else [None] * len(g)
                    for key, meta, gh, bh in zip(batch.keys, batch.meta, g, b):
                        raw, ref = _reference(meta, language, digits)
                        refs.append(ref)
                        greedy.append(gh)
                        if bh is not None:
                            lm_hyps.append(bh)
                        if jsonl is not None:
                            rec = {"set": name, "key": key, "id": meta.get("id", key), "reference_raw": raw,
                                   "reference": ref, "greedy": gh}
                            if bh is not None:
                                rec["lm"] = bh
                            jsonl.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    advance(len(g))
            ge = error_rates(refs, greedy)
            row = {"set": name, "path": path, "utterances": len(refs), "hours": seconds / 3600,
                   "greedy_wer": ge.wer, "greedy_cer": ge.cer, "ref_words": ge.ref_words,
                   "bad_utterances": bad.bad, "bad_shards": bad.bad_shards}
            if beam is not None:
                le = error_rates(refs, lm_hyps)
                row.update(lm_wer=le.wer, lm_cer=le.cer)
            rows.append(row)
    finally:
        if jsonl is not None:
            jsonl.close()
    if out is not None:
        write_summary(rows, out)
    return rows


def summary_markdown(rows: list[dict]) -> str:
    """The per-set table in Markdown (percentages)."""
    lm = any("lm_wer" in r for r in rows)
    bad = any(r.get("bad_utterances") or r.get("bad_shards") for r in rows)
    head = (["set", "utterances", "hours", "greedy WER %", "greedy CER %"] + (["LM WER %", "LM CER %"] if lm else [])
            + (["bad utterances skipped", "bad shards"] if bad else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["set"], str(r["utterances"]), f"{r['hours']:.3f}", _pct(r["greedy_wer"]), _pct(r["greedy_cer"])]
        if lm:
            cells += [_pct(r.get("lm_wer", math.nan)), _pct(r.get("lm_cer", math.nan))]
        if bad:
            cells += [str(r.get("bad_utterances", 0)), str(r.get("bad_shards", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def write_summary(rows: list[dict], out_dir: str | Path) -> None:
    """``summary.json``, ``summary.csv`` and ``summary.md`` in ``out_dir``."""
    out = Path(out_dir)
    write_text(out / "summary.json", json.dumps(rows, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    write_text(out / "summary.md", summary_markdown(rows))
