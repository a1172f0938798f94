"""How clean a segmentation is against a reference: pure functions over time intervals.

Unions of intervals are pyannote.core's ``Timeline.support``; DER, JER and cluster purity are
pyannote.metrics'. Written here is only what pyannote lacks: an O(log n) overlap query on a
union (``Cover``), the share of kept time that is speech / music / noise / silence, speech
recall of kept segments, per-segment dominant-speaker purity and crosstalk, and edges that
cut through words.

Everything is accumulated as *durations* (``RecordingSums``), so a method's score over many
recordings is the ratio of summed durations (micro-average), never a mean of ratios.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, fields
from itertools import accumulate
from typing import Iterable, Sequence

from pyannote.core import Annotation, Segment, Timeline

from corpus_tools.score.reference import Reference

# A segment "has a second speaker" when its second-largest reference speaker talks in it for
# more than this long (shorter overlaps are back-channels and boundary slop).
SECOND_SPEAKER_MIN_S = 1.0
# An edge cuts a word only when it lies inside the word by more than this on both sides:
# aligners and annotators place word edges only to about a frame.
WORD_CUT_TOLERANCE_S = 0.010

Interval = tuple[float, float]
Hyp = tuple[float, float, "str | None"]  # a kept segment: start, end, speaker label (or None)


def support(intervals: Iterable[Sequence]) -> Timeline:
    """The union of ``(start, end, ...)`` intervals as a pyannote Timeline."""
    return Timeline([Segment(float(i[0]), float(i[1])) for i in intervals if i[1] > i[0]]).support()


class Cover:
    """A union of intervals (pyannote's support) that answers "how many seconds of [a, b] does
    it cover" in O(log n): ``Timeline.crop`` walks the timeline, which took ~30 s per 3 h
    broadcast with a thousand segments and turns."""

    def __init__(self, intervals: Iterable[Sequence]):
        self.timeline = support(intervals)
        self.starts = [seg.start for seg in self.timeline]
        self.ends = [seg.end for seg in self.timeline]
        self.cumulative = [0.0, *accumulate(e - s for s, e in zip(self.starts, self.ends))]

    def duration(self) -> float:
        return self.cumulative[-1]

    def overlap(self, start: float, end: float) -> float:
        if end <= start:
            return 0.0
        i = bisect_right(self.ends, start)  # first interval ending after `start`
        j = bisect_left(self.starts, end)  # intervals[:j] start before `end`
        if j <= i:
            return 0.0
        inside = self.cumulative[j] - self.cumulative[i]
        return inside - max(0.0, start - self.starts[i]) - max(0.0, self.ends[j - 1] - end)


@dataclass
class RecordingSums:
    """Durations (seconds) and counts of one recording, or of many summed."""

    recordings: int = 0
    segments: int = 0
    kept_s: float = 0.0
    speech_kept_s: float = 0.0
    speech_s: float = 0.0
    speech_covered_s: float = 0.0
    dominant_s: float = 0.0
    multi_speaker_n: int = 0
    multi_speaker_s: float = 0.0
    # only over recordings with a non-speech label track
    labelled_recordings: int = 0
    labelled_kept_s: float = 0.0
    music_kept_s: float = 0.0
    noise_kept_s: float = 0.0
    silence_kept_s: float = 0.0
    # only over recordings with word times
    edges_n: int = 0
    edges_cut_n: int = 0
    # pyannote.metrics components: {"der@<collar>": {...}, "jer@<collar>": {...}, "label_purity": {...}}
    diarization: dict[str, dict[str, float]] = field(default_factory=dict)
    diarized_recordings: int = 0

    def __iadd__(self, other: "RecordingSums") -> "RecordingSums":
        for f in fields(self):
            if f.name == "diarization":
                for key, comps in other.diarization.items():
                    mine = self.diarization.setdefault(key, {})
                    for name, v in comps.items():
                        mine[name] = mine.get(name, 0.0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def recording_sums(segments: Sequence[Hyp], ref: Reference) -> RecordingSums:
    """What the kept ``segments`` of one recording hold, measured against its reference."""
    speech = Cover(ref.turns)
    by_speaker = [Cover(t for t in ref.turns if t[2] == spk) for spk in sorted({t[2] for t in ref.turns})]
    s = RecordingSums(recordings=1, segments=len(segments))
    s.speech_s = speech.duration()
    s.speech_covered_s = sum(speech.overlap(seg.start, seg.end) for seg in support(segments))
    music = Cover(n for n in ref.nonspeech if n[2] == "music")
    noise = Cover(n for n in ref.nonspeech if n[2] == "noise")
    heard = Cover([*ref.turns, *(n for n in ref.nonspeech if n[2] in ("music", "noise"))])
    for start, end, _ in segments:
        dur = max(0.0, end - start)
        s.kept_s += dur
        s.speech_kept_s += speech.overlap(start, end)
        talk = sorted((c.overlap(start, end) for c in by_speaker), reverse=True)
        s.dominant_s += talk[0] if talk else 0.0
        if len(talk) > 1 and talk[1] > SECOND_SPEAKER_MIN_S:
            s.multi_speaker_n += 1
            s.multi_speaker_s += dur
        if ref.has_nonspeech:
            s.labelled_kept_s += dur
            s.music_kept_s += music.overlap(start, end)
            s.noise_kept_s += noise.overlap(start, end)
            s.silence_kept_s += dur - heard.overlap(start, end)
    s.labelled_recordings = int(ref.has_nonspeech)
    if ref.has_words:
        s.edges_n, s.edges_cut_n = 2 * len(segments), count_cut_edges(segments, ref.words)
    return s


def count_cut_edges(segments: Sequence[Hyp], words: Sequence[tuple[float, float, str]],
                    tolerance: float = WORD_CUT_TOLERANCE_S) -> int:
    """How many segment starts and ends lie strictly inside a word (by more than ``tolerance``)."""
    words = sorted((w for w in words if w[1] - w[0] > 2 * tolerance), key=lambda w: w[0])
    starts = [w[0] for w in words]
    reach = list(accumulate((w[1] for w in words), max))  # latest word end among words[:i+1]
    cut = 0
    for start, end, _ in segments:
        for t in (start, end):
            i = bisect_left(starts, t - tolerance)  # words[:i] start more than `tolerance` before t
            if i and reach[i - 1] > t + tolerance:
                cut += 1
    return cut


# -- diarization (pyannote.metrics) -----------------------------------------------------


def annotation(items: Iterable[Sequence], uri: str) -> Annotation:
    """``(start, end, label)`` items as a pyannote Annotation (one track per item)."""
    ann = Annotation(uri=uri)
    for k, (start, end, label) in enumerate(items):
        if end > start:
            ann[Segment(float(start), float(end)), k] = str(label)
    return ann


def der_metric(collar: float):
    from pyannote.metrics.diarization import DiarizationErrorRate

    return DiarizationErrorRate(collar=collar)


def jer_metric(collar: float):
    from pyannote.metrics.diarization import JaccardErrorRate

    return JaccardErrorRate(collar=collar)


def purity_metric():
    from pyannote.metrics.diarization import DiarizationPurity

    return DiarizationPurity()


def diarization_sums(ref: Reference, turns: Sequence[Sequence] | None, segments: Sequence[Hyp],
                     duration: float, collars: Sequence[float]) -> dict[str, dict[str, float]]:
    """pyannote.metrics components for one recording: DER and JER of the diarization ``turns``
    at each collar (evaluated over the whole recording, [0, duration]), and the cluster purity
    of the segments labelled by their speaker (unlabelled segments left out)."""
    uri = ref.recording
    reference = annotation(ref.turns, uri)
    uem = Timeline([Segment(0.0, max(duration, 0.0))], uri=uri)
    out: dict[str, dict[str, float]] = {}
    if turns is not None:
        hyp = annotation(turns, uri)
        for collar in collars:
            for name, make in (("der", der_metric), ("jer", jer_metric)):
                metric = make(collar)
                detail = metric(reference, hyp, uem=uem, detailed=True)
                out[f"{name}@{collar:g}"] = {k: float(detail[k]) for k in metric.components_}
    labelled = [s for s in segments if s[2] is not None]
    metric = purity_metric()
    detail = metric(reference, annotation(labelled, uri), detailed=True)
    out["label_purity"] = {k: float(detail[k]) for k in metric.components_}
    return out


def diarization_rate(key: str, components: dict[str, float]) -> float:
    """The rate pyannote.metrics gives for summed components (its own accumulation rule)."""
    name, _, collar = key.partition("@")
    metric = {"der": lambda: der_metric(float(collar)), "jer": lambda: jer_metric(float(collar)),
              "label_purity": purity_metric}[name]()
    return float(metric.compute_metric(components))


# -- rates ------------------------------------------------------------------------------


def rates(s: RecordingSums, collars: Sequence[float]) -> dict[str, float | int | None]:
    """The score row of summed durations: shares are fractions in [0, 1]; None when undefined
    (no kept audio, no label track, no word times, no diarization)."""

    def ratio(num: float, den: float) -> float | None:
        return num / den if den > 0 else None

    has_labels = s.labelled_recordings > 0
    row: dict[str, float | int | None] = {
        "recordings": s.recordings, "segments": s.segments, "kept_h": s.kept_s / 3600,
        "reference_speech_h": s.speech_s / 3600,
        "speech_precision": ratio(s.speech_kept_s, s.kept_s),
        "speech_recall": ratio(s.speech_covered_s, s.speech_s),
        "music_share": ratio(s.music_kept_s, s.labelled_kept_s) if has_labels else None,
        "noise_share": ratio(s.noise_kept_s, s.labelled_kept_s) if has_labels else None,
        "silence_share": ratio(s.silence_kept_s, s.labelled_kept_s) if has_labels else None,
        "speaker_purity": ratio(s.dominant_s, s.kept_s),
        "multi_speaker_segments": s.multi_speaker_n, "multi_speaker_h": s.multi_speaker_s / 3600,
        "edges": s.edges_n if s.edges_n else None,
        "cut_edge_share": ratio(s.edges_cut_n, s.edges_n),
    }
    for collar in collars:
        for name in ("der", "jer"):
            comps = s.diarization.get(f"{name}@{collar:g}")
            row[f"{name}_collar{collar:g}"] = diarization_rate(f"{name}@{collar:g}", comps) if comps else None
    comps = s.diarization.get("label_purity")
    row["label_purity"] = diarization_rate("label_purity", comps) if comps and comps.get("total", 0) > 0 else None
    row["diarized_recordings"] = s.diarized_recordings
    return row
