"""Post-processing of Whisper/WhisperX segments (thesis §6.2.4).

First, before the paper's rules, the word times are checked against the audio
(``keep_words_in_speech``; methods w-pp-1s/3s and wx-align, wx-diar, wx-diar-1s/3s). An
aligner times every word of the transcript, also words Whisper hallucinated over music or
silence, and stretches words over pauses. So:

* a word is kept when at least half of it lies inside speech (pyannote VAD, the ``vad``
  stage) extended by a collar of 0.2 s on both sides; a zero-length word when its time point
  does. A kept word is clipped to that collared speech;
* a word without times (an aligner that could not place it) is not kept;
* a segment keeps the text of its kept words only (its own text when it keeps them all) and
  runs from its first kept word to its last; a segment left without words is dropped, and
  counted under the rule ``off-speech``.

The collar gives back word edges the VAD trims (soft onsets, final consonants) and is far
shorter than the pauses and music stretches it must not bridge. On the sample broadcast
(``wx-diar-3s``, Whisper base) no collar keeps 60.8 % of the reference speech and 1.4 s of
music or silence, 0.2 s keeps 61.1 % and 1.8 s, 0.5 s 61.1 % and 2.0 s; the hallucination
over music is dropped with any of them. The wx-align stage has already kept each word
inside its WhisperX chunk and made the times monotonic (``tidy_words``). ``w-raw`` is not
checked: it is Whisper's own output, cut at its first and last word.

Then the rules, in the paper's order:

1. drop segments whose transcript equals a phrase of the list (case-insensitive, trimmed): the
   language's ``manifests/phrases/<lang>.txt`` plus any files the user adds (or those alone);
2. merge: Whisper — a segment whose text does not end a sentence absorbs the next one,
   recursively, until the merged text does; WhisperX — consecutive segments of the same
   speaker become one. Never across a gap longer than 3 s (a gap of exactly 3 s merges);
3. drop segments shorter than the threshold (1 s or 3 s).

After merging, a segment longer than 30 s is cut in half, recursively, until every piece is
≤ 30 s (95 s → four pieces of 23.75 s).

Choices the paper leaves open, made here and tested:

* closing quotes and brackets after the mark do not hide it: ``ja."``, ``(klaar.)`` and
  ``zei hij.'`` end a sentence;
* a trailing ellipsis (``...`` or ``…``, also inside quotes: ``toen…"``) does *not* end a
  sentence: the thesis names ellipses as the mark of an utterance Whisper cut between two
  30 s windows, which is what merging repairs;
* segments with no speaker label are never merged on speaker;
* every method's output is *sanitised*: clipped to ``[0, file duration]``, empty or
  zero-length pieces removed, and overlaps between consecutive segments (Whisper
  timestamps sometimes overlap) resolved by cutting at the middle of the overlap, so
  kept audio is never used twice.

Segments are plain dicts with at least ``start``, ``end``, ``text`` and optionally
``speaker`` and ``words`` (list of dicts with ``start``/``end``/``word``). All functions
return new lists and never mutate their input.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

MAX_GAP_S = 3.0
MAX_LEN_S = 30.0
_EPS = 1e-6
SENTENCE_END = (".", "?", "!")
# Closing quotation marks and brackets that may follow a sentence end: straight and typographic
# quotes, guillemets both ways (Dutch and German use them in either direction), brackets.
CLOSERS = "\"'”’‘“»«›‹)]}"

PHRASES_DIR = Path(__file__).resolve().parents[2] / "manifests" / "phrases"


PhraseFiles = str | Path | Iterable[str | Path] | None


def phrase_files(language: str | None = None, paths: PhraseFiles = None, *, default: bool = True) -> list[Path]:
    """The phrase list files to use: the language's default list ``manifests/phrases/<lang>.txt``
    (when ``default`` and the language has one), then ``paths`` (one file or several), which
    extend it. ``default=False`` uses ``paths`` alone. A named file that does not exist is an error."""
    given = [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)
    extra = [Path(p).absolute() for p in given]
    for p in extra:
        if not p.is_file():
            raise FileNotFoundError(f"phrase list not found: {p}")
    builtin = PHRASES_DIR / f"{language or 'nl'}.txt"
    return ([builtin] if default and builtin.exists() else []) + extra


def load_phrases(language: str | None = None, paths: PhraseFiles = None, *, default: bool = True) -> set[str]:
    """The phrases of ``phrase_files(language, paths, default=default)``, normalised, together."""
    phrases = set()
    for path in phrase_files(language, paths, default=default):
        for line in path.read_text(encoding="utf-8").splitlines():
            s = line.strip()
            if not s or (s.startswith("#") and s != "#"):
                continue
            phrases.add(normalise_phrase(s))
    return phrases


def normalise_phrase(text: str) -> str:
    return " ".join(text.strip().lower().split())


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends in ``.``, ``?`` or ``!``, also when closing quotes or brackets follow
    (``ja."``, ``(klaar.)``, ``zei hij.'``); an ellipsis never ends a sentence (``toen…"``)."""
    t = text.rstrip().rstrip(CLOSERS + " \t\n")
    if t.endswith("...") or t.endswith("…"):
        return False
    return t.endswith(SENTENCE_END)


@dataclass
class DropLog:
    """Seconds and counts removed by each rule, for `corpus stats`."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, rule: str, segs: list[dict]) -> None:
        if not segs:
            return
        self.seconds[rule] = self.seconds.get(rule, 0.0) + sum(max(0.0, s["end"] - s["start"]) for s in segs)
        self.counts[rule] = self.counts.get(rule, 0) + len(segs)

    def merge(self, other: "DropLog") -> None:
        for k, v in other.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v


# -- word times against the audio ---------------------------------------------------------

SPEECH_COLLAR_S = 0.2
MIN_IN_SPEECH = 0.5  # share of a word's duration that must lie in (collared) speech


def tidy_words(words: list[dict], lo: float, hi: float) -> list[dict]:
    """Word times clipped to ``[lo, hi]`` (the chunk they were aligned in) and made monotonic:
    a word starts no earlier than the previous word ends and ends no earlier than it starts.
    Words without times (``None``) keep ``None``."""
    out, floor = [], lo
    for w in words:
        start, end = w.get("start"), w.get("end")
        if start is None or end is None or not (math.isfinite(start) and math.isfinite(end)):
            out.append({**w, "start": None, "end": None})
            continue
        start = min(max(float(start), floor), hi)
        end = min(max(float(end), start), hi)
        out.append({**w, "start": round(start, 3), "end": round(end, 3)})
        floor = end
    return out


def collared(regions: Iterable, collar: float = SPEECH_COLLAR_S) -> list[tuple[float, float]]:
    """Speech regions widened by ``collar`` on both sides, sorted, overlaps merged."""
    out: list[list[float]] = []
    for start, end in sorted((float(a) - collar, float(b) + collar) for a, b in regions):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _overlaps(start: float, end: float, speech: list[tuple[float, float]],
              ends: list[float] | None = None) -> list[tuple[float, float]]:
    """The parts of ``[start, end]`` inside ``speech``. With ``ends`` (the regions' ends, in
    ascending order as :func:`collared` leaves them) the search starts at the first region that
    ends after ``start`` and stops at the first that starts at ``end``: a recording's words
    times its regions would make the speech check quadratic."""
    if ends is None:
        return [(max(start, a), min(end, b)) for a, b in speech if a < end and b > start]
    out, i = [], bisect.bisect_right(ends, start)
    while i < len(speech) and speech[i][0] < end:
        a, b = speech[i]
        out.append((max(start, a), min(end, b)))
        i += 1
    return out


def keep_words_in_speech(segs: list[dict], regions: Iterable, *, collar: float = SPEECH_COLLAR_S,
                         min_share: float = MIN_IN_SPEECH, joiner: str = " ",
                         log: DropLog | None = None) -> list[dict]:
    """The words that lie in speech, and the segments that keep any (see the module docstring).

    ``regions``: the ``vad`` stage's ``[[start, end], ...]``; ``joiner`` joins the kept words'
    text ("" for languages written without spaces)."""
    speech = collared(regions, collar)
    ends = [b for _, b in speech]
    if not all(x <= y for x, y in zip(ends, ends[1:])):  # an inverted (or NaN) region: scan them all
        ends = None
    keep, drop = [], []
    for s in segs:
        words = s.get("words") or []
        kept = []
        for w in words:
            start, end = w.get("start"), w.get("end")
            if start is None or end is None:
                continue
            if kept:  # monotonic within the segment
                start, end = max(start, kept[-1]["end"]), max(end, kept[-1]["end"])
            if ends is not None and end - start > _EPS and min_share <= 1.0:
                i = bisect.bisect_right(ends, start)
                if i < len(speech) and speech[i][0] <= start and end <= speech[i][1]:
                    # the common case, wholly inside one region: kept as it is (what follows gives the same)
                    kept.append({**w, "start": round(start, 3), "end": round(end, 3)})
                    continue
            inside = _overlaps(start, end, speech, ends)
            if end - start <= _EPS:
                if any(a <= start <= b for a, b in speech):
                    kept.append({**w, "start": start, "end": start})
            elif sum(b - a for a, b in inside) >= min_share * (end - start) - _EPS:
                kept.append({**w, "start": round(inside[0][0], 3), "end": round(inside[-1][1], 3)})
        if not kept:
            drop.append(s)
            continue
        text = (s.get("text") or "") if len(kept) == len(words) else joiner.join(w["word"].strip() for w in kept)
        keep.append({**s, "start": kept[0]["start"], "end": max(w["end"] for w in kept), "text": text.strip(),
                     "words": kept})
    if log is not None:
        log.add("off-speech", drop)
    return keep


def dominant_speaker(start: float, end: float, turns: Iterable) -> str | None:
    """The speaker of the turns ``[(start, end, speaker), ...]`` that overlap ``[start, end]``
    longest in total (WhisperX's rule for a segment's speaker), None when none overlaps."""
    total: dict[str, float] = {}
    for a, b, spk in turns:
        overlap = min(end, float(b)) - max(start, float(a))
        if overlap > 0:
            total[spk] = total.get(spk, 0.0) + overlap
    return max(total, key=total.get) if total else None


# -- the rules --------------------------------------------------------------------------


def filter_phrases(segs: list[dict], phrases: set[str], log: DropLog | None = None) -> list[dict]:
    """Rule 1: drop segments whose whole transcript is a listed phrase (or empty)."""
    keep, drop = [], []
    for s in segs:
        t = normalise_phrase(s.get("text") or "")
        (drop if (t in phrases or t == "") else keep).append(s)
    if log is not None:
        log.add("phrase", drop)
    return keep


def _join(a: dict, b: dict) -> dict:
    out = dict(a)
    out["start"] = min(a["start"], b["start"])
    out["end"] = max(a["end"], b["end"])
    out["text"] = " ".join(t for t in ((a.get("text") or "").strip(), (b.get("text") or "").strip()) if t)
    if "words" in a or "words" in b:
        out["words"] = list(a.get("words") or []) + list(b.get("words") or [])
    return out


def _gap_ok(a: dict, b: dict, max_gap: float) -> bool:
    return b["start"] - a["end"] <= max_gap + _EPS


def merge_on_punctuation(segs: list[dict], max_gap: float = MAX_GAP_S) -> list[dict]:
    """Rule 2 (Whisper): merge forward until the text ends a sentence; never over a gap > max_gap."""
    out: list[dict] = []
    cur: dict | None = None
    for s in sorted(segs, key=lambda s: (s["start"], s["end"])):
        if cur is None:
            cur = dict(s)
        elif not ends_sentence(cur.get("text") or "") and _gap_ok(cur, s, max_gap):
            cur = _join(cur, s)
        else:
            out.append(cur)
            cur = dict(s)
    if cur is not None:
        out.append(cur)
    return out


def merge_on_speaker(segs: list[dict], max_gap: float = MAX_GAP_S) -> list[dict]:
    """Rule 2 (WhisperX): merge consecutive segments of the same (known) speaker."""
    out: list[dict] = []
    for s in sorted(segs, key=lambda s: (s["start"], s["end"])):
        prev = out[-1] if out else None
        if (prev is not None and s.get("speaker") is not None
                and prev.get("speaker") == s.get("speaker") and _gap_ok(prev, s, max_gap)):
            out[-1] = _join(prev, s)
        else:
            out.append(dict(s))
    return out


def drop_short(segs: list[dict], min_len: float, log: DropLog | None = None) -> list[dict]:
    """Rule 3: drop segments shorter than ``min_len`` seconds."""
    keep = [s for s in segs if s["end"] - s["start"] >= min_len - _EPS]
    if log is not None:
        log.add("short", [s for s in segs if s["end"] - s["start"] < min_len - _EPS])
    return keep


def _split_text(seg: dict, mid: float) -> tuple[str, str]:
    words = seg.get("words") or []
    timed = [w for w in words if w.get("start") is not None]
    if timed:
        left = " ".join(w.get("word", "").strip() for w in words if (w.get("start") or seg["start"]) < mid)
        right = " ".join(w.get("word", "").strip() for w in words if (w.get("start") or seg["start"]) >= mid)
        return left.strip(), right.strip()
    toks = (seg.get("text") or "").split()
    k = round(len(toks) / 2)
    return " ".join(toks[:k]), " ".join(toks[k:])


def split_long(segs: list[dict], max_len: float = MAX_LEN_S) -> list[dict]:
    """Cut segments longer than ``max_len`` in half, recursively (text split by word times)."""
    out: list[dict] = []
    stack = list(reversed(segs))
    while stack:
        s = stack.pop()
        if s["end"] - s["start"] <= max_len + _EPS:
            out.append(s)
            continue
        mid = (s["start"] + s["end"]) / 2
        lt, rt = _split_text(s, mid)
        a = {**s, "end": mid, "text": lt}
        b = {**s, "start": mid, "text": rt}
        if "words" in s:
            a["words"] = [w for w in s["words"] if (w.get("start") or s["start"]) < mid]
            b["words"] = [w for w in s["words"] if (w.get("start") or s["start"]) >= mid]
        stack.extend([b, a])
    return out


def sanitise(segs: list[dict], file_duration: float | None) -> list[dict]:
    """Clip to the file, drop empty pieces, and cut overlaps at their middle."""
    clipped = []
    for s in segs:
        start = max(0.0, float(s["start"]))
        end = float(s["end"])
        if file_duration is not None:
            end = min(end, file_duration)
        if not (math.isfinite(start) and math.isfinite(end)) or end - start <= _EPS:
            continue
        clipped.append({**s, "start": start, "end": end})
    clipped.sort(key=lambda s: (s["start"], s["end"]))
    out: list[dict] = []
    for s in clipped:
        if out and s["start"] < out[-1]["end"]:
            prev = out[-1]
            if s["end"] <= prev["end"]:
                continue  # fully inside the previous segment: its audio is already kept
            cut = (s["start"] + prev["end"]) / 2
            prev["end"] = cut
            s = {**s, "start": cut}
            if prev["end"] - prev["start"] <= _EPS:
                out.pop()
        out.append(s)
    return out


def postprocess(segs: list[dict], *, merge: str, min_len: float, phrases: set[str],
                file_duration: float | None, max_gap: float = MAX_GAP_S, max_len: float = MAX_LEN_S,
                log: DropLog | None = None) -> list[dict]:
    """The full chain: phrase filter → merge → halve > 30 s → drop short → sanitise."""
    if merge not in ("punctuation", "speaker"):
        raise ValueError(f"merge must be 'punctuation' or 'speaker', not {merge!r}")
    segs = sanitise(segs, file_duration)  # past-the-end and inverted stamps first
    segs = filter_phrases(segs, phrases, log)
    segs = merge_on_punctuation(segs, max_gap) if merge == "punctuation" else merge_on_speaker(segs, max_gap)
    segs = split_long(segs, max_len)
    segs = sanitise(segs, file_duration)
    return drop_short(segs, min_len, log)
