"""Per-recording files in the formats other tools read: diarization as RTTM, words as CTM.

``WORKDIR/segments/rttm/<recording>.rttm``: the wx-diar stage's speaker turns, one
``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` line each, written by
pyannote.core (``pyannote.database.util.load_rttm`` and pyannote.metrics read it; Kaldi and
Lhotse read RTTM too).

``WORKDIR/segments/ctm/<recording>.ctm``: the word alignment the wx-align method cuts at,
after the speech check (``postprocess.keep_words_in_speech``), one
``<file> 1 <start> <duration> <word> <confidence>`` line per word (NIST CTM; the sixth column
is the aligner's score, left out for a word that has none).

``<file>`` and the file name are the recording id made safe for file names and
space-separated formats (the stem of its stage cache files).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from corpus_tools.atomic import write_text
from corpus_tools.manifests import WorkDir
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment.assemble import method_segments
from corpus_tools.segment.runner import safe_id


def rttm_path(wd: WorkDir, rid: str) -> Path:
    return wd.rttm_dir / f"{safe_id(rid)}.rttm"


def ctm_path(wd: WorkDir, rid: str) -> Path:
    return wd.ctm_dir / f"{safe_id(rid)}.ctm"


def rttm_text(file_id: str, turns: list) -> str:
    """RTTM lines for ``[(start, end, speaker), ...]``, written by pyannote.core."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=file_id)
    for track, (start, end, speaker) in enumerate(turns):
        if float(end) > float(start):
            ann[Segment(float(start), float(end)), track] = str(speaker).replace(" ", "_")
    buf = io.StringIO()
    ann.write_rttm(buf)
    return buf.getvalue()


def ctm_text(file_id: str, segments: list[dict]) -> str:
    """CTM lines for the timed words of ``segments``, in time order."""
    words = sorted((w for s in segments for w in s.get("words") or []
                    if w.get("start") is not None and w.get("end") is not None and w.get("word", "").strip()),
                   key=lambda w: (w["start"], w["end"]))
    lines = []
    for w in words:
        token = re.sub(r"\s+", "_", w["word"].strip())
        conf = f" {w['score']:.3f}" if w.get("score") is not None else ""
        lines.append(f"{file_id} 1 {w['start']:.3f} {max(0.0, w['end'] - w['start']):.3f} {token}{conf}\n")
    return "".join(lines)


def write_standard_outputs(wd: WorkDir, recs: list[dict], cache, stages: list[str]) -> dict[str, int]:
    """Write the RTTM (when the wx-diar stage ran) and CTM (when wx-align ran) of every
    recording whose stages are cached; returns how many files of each were written."""
    written = {"rttm": 0, "ctm": 0}
    for rec in recs:
        rid = rec["recording_id"]
        if cache.get("error", rid) is not None:
            continue
        if "wx-diar" in stages and cache.get("wx-diar", rid) is not None:
            write_text(rttm_path(wd, rid), rttm_text(safe_id(rid), cache.get("wx-diar", rid).get("turns") or []))
            written["rttm"] += 1
        if "wx-align" in stages and all(cache.get(s, rid) is not None for s in ("vad", "wx-align")):
            segs = method_segments("wx-align", rec, cache, set(), pp.DropLog())
            write_text(ctm_path(wd, rid), ctm_text(safe_id(rid), segs))
            written["ctm"] += 1
    return written
