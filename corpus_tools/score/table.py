"""The score table as people read it (terminal and report): shares in percent, columns that
no scored method has (no label track, no word times, no diarization) left out."""

from __future__ import annotations

from typing import Sequence

PERCENT = "percent"
HOURS = "hours"
COUNT = "count"


def display_columns(collars: Sequence[float]) -> list[tuple[str, str, str]]:
    """(column, header, kind) in display order."""
    # every method is scored on the same recordings: their count is said once, under the table
    cols = [("method", "method", "text"), ("segments", "segs", COUNT),
            ("kept_h", "kept h", HOURS), ("speech_precision", "speech P %", PERCENT),
            ("speech_recall", "speech R %", PERCENT), ("music_share", "music %", PERCENT),
            ("noise_share", "noise %", PERCENT), ("silence_share", "silence %", PERCENT),
            ("speaker_purity", "spk purity %", PERCENT), ("multi_speaker_segments", "2-spk segs", COUNT),
            ("multi_speaker_h", "2-spk h", HOURS), ("cut_edge_share", "cut edges %", PERCENT)]
    for c in collars:
        cols.append((f"der_collar{c:g}", f"DER c{c:g} %", PERCENT))
    for c in collars:
        cols.append((f"jer_collar{c:g}", f"JER c{c:g} %", PERCENT))
    return cols + [("label_purity", "label purity %", PERCENT)]


def fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == PERCENT:
        return f"{100 * value:.1f}"
    if kind == HOURS:
        return f"{value:.3f}"
    if kind == COUNT:
        return f"{int(value):,}"
    return str(value)


def display_rows(rows: Sequence[dict], collars: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells; a column is kept when some row has a value in it."""
    cols = [(k, h, kind) for k, h, kind in display_columns(collars)
            if any(r.get(k) is not None for r in rows)]
    return [h for _, h, _ in cols], [[fmt(r.get(k), kind) for k, _, kind in cols] for r in rows]
