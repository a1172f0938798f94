"""Reference annotations for `corpus score`: standard files → one Reference per recording.

Accepted formats (by file suffix; a folder is searched recursively):

``.rttm``        ``TYPE file chnl tbeg tdur ortho stype name conf slat``. ``SPEAKER`` lines are
                 speaker turns (speech is their union); ``MUSIC`` / ``NOISE`` / ``SILENCE`` lines
                 are non-speech labels; ``NON-SPEECH`` lines take their label from the name field
                 (the subtype field when the name is ``<NA>``). Other types (``SPKR-INFO``,
                 ``SEGMENT``, ``LEXEME``, ...) are ignored.
``.txt``/``.lab`` Audacity label track: ``start<TAB>end<TAB>label`` per line, one file per
                 recording named after it (``bc000.txt`` or ``bc000.labels.txt``).
``.csv``         ``recording,start,end,label`` (header optional), any number of recordings.
``.ctm``         ``recording channel start duration word [conf]``: word times.

Label tracks (Audacity, CSV) hold non-speech only: ``music``, ``noise``, ``silence`` (any case;
``applause`` and ``laughter`` count as noise). Any other label is an error, since speech and
speakers come from the RTTM turns.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

NONSPEECH_KINDS = ("music", "noise", "silence")
NONSPEECH_LABELS = {"music": "music", "noise": "noise", "silence": "silence",
                    "applause": "noise", "laughter": "noise"}
RTTM_NONSPEECH_TYPES = {"MUSIC": "music", "NOISE": "noise", "SILENCE": "silence"}
AUDACITY_SUFFIXES = (".txt", ".lab")
REFERENCE_SUFFIXES = (".rttm", ".csv", ".ctm") + AUDACITY_SUFFIXES


class ReferenceError(ValueError):
    """A reference file is missing, malformed or names an unknown label."""


@dataclass
class Reference:
    """What is known about one recording: who speaks when, what else is heard, word times.

    ``has_turns``: an RTTM describes the recording (one without SPEAKER lines for it says
    "nobody speaks here"); ``has_nonspeech``: a label track (or RTTM non-speech lines) does;
    ``has_words``: a CTM does. Only recordings with ``has_turns`` are scored."""

    recording: str
    turns: list[tuple[float, float, str]] = field(default_factory=list)
    nonspeech: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, kind)
    words: list[tuple[float, float, str]] = field(default_factory=list)
    has_turns: bool = False
    has_nonspeech: bool = False
    has_words: bool = False
    # file stems this reference may be matched by besides its id (Audacity: name up to the first dot)
    alt_ids: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)


def load_references(src: str | os.PathLike) -> dict[str, Reference]:
    """Every reference in a file or folder, keyed by the recording id the files give."""
    root = Path(src)
    if not root.exists():
        raise ReferenceError(f"reference not found: {root}")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in REFERENCE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise ReferenceError(f"no reference files in {root} (expected {', '.join(REFERENCE_SUFFIXES)})")
    else:
        if root.suffix.lower() not in REFERENCE_SUFFIXES:
            raise ReferenceError(f"{root}: unknown reference format {root.suffix or '(no suffix)'!r}; "
                                 f"expected {', '.join(REFERENCE_SUFFIXES)}")
        files = [root]
    refs: dict[str, Reference] = {}
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".rttm":
            _read_rttm(path, refs)
        elif suffix == ".ctm":
            _read_ctm(path, refs)
        elif suffix == ".csv":
            _read_label_csv(path, refs)
        else:
            _read_audacity(path, refs)
    for ref in refs.values():
        ref.turns.sort()
        ref.nonspeech.sort()
        ref.words.sort()
    return refs


def _get(refs: dict[str, Reference], rid: str, path: Path) -> Reference:
    ref = refs.setdefault(rid, Reference(rid))
    ref.sources.add(str(path))
    return ref


def _times(path: Path, lineno: int, start: str, dur_or_end: str, *, is_duration: bool) -> tuple[float, float]:
    try:
        t0, t1 = float(start), float(dur_or_end)
    except ValueError:
        raise ReferenceError(f"{path}:{lineno}: times must be numbers, got {start!r} {dur_or_end!r}") from None
    end = t0 + t1 if is_duration else t1
    if not (math.isfinite(t0) and math.isfinite(end)):
        raise ReferenceError(f"{path}:{lineno}: times must be finite numbers, got {start!r} {dur_or_end!r}")
    if t0 < 0 or end < t0:
        what = "duration" if is_duration else "end"
        raise ReferenceError(f"{path}:{lineno}: negative start or {what} before start ({start} {dur_or_end})")
    return t0, end


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ReferenceError(f"{path}: not a UTF-8 text file") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith((";;", "#")):
            yield lineno, line, s


def nonspeech_kind(label: str, path: Path, lineno: int) -> str:
    kind = NONSPEECH_LABELS.get(label.strip().lower())
    if kind is None:
        raise ReferenceError(
            f"{path}:{lineno}: unknown label {label.strip()!r}; label tracks hold "
            f"{', '.join(NONSPEECH_KINDS)} (applause, laughter count as noise); speech comes from RTTM "
            f"SPEAKER turns")
    return kind


def _read_rttm(path: Path, refs: dict[str, Reference]) -> None:
    seen = False
    for lineno, _, s in _lines(path):
        f = s.split()
        kind_type = f[0].upper()
        if kind_type not in ("SPEAKER", "NON-SPEECH", *RTTM_NONSPEECH_TYPES):
            continue  # SPKR-INFO, SEGMENT, LEXEME, NOSCORE, ...
        if len(f) < 8:
            raise ReferenceError(f"{path}:{lineno}: an RTTM line has at least 8 fields "
                                 f"(TYPE file chnl tbeg tdur ortho stype name ...), got {len(f)}")
        t0, t1 = _times(path, lineno, f[3], f[4], is_duration=True)
        ref = _get(refs, f[1], path)
        ref.has_turns = seen = True  # an RTTM describes the whole recording: no turn, no speech
        if kind_type == "SPEAKER":
            if t1 > t0:
                ref.turns.append((t0, t1, f[7]))
            continue
        if kind_type == "NON-SPEECH":
            label = f[7] if f[7] != "<NA>" else f[6]
            kind = nonspeech_kind(label, path, lineno)
        else:
            kind = RTTM_NONSPEECH_TYPES[kind_type]
        ref.has_nonspeech = True
        if t1 > t0:
            ref.nonspeech.append((t0, t1, kind))
    if not seen:  # an RTTM without turns says "no speech in this recording": named after the file
        _get(refs, path.stem, path).has_turns = True


def _read_ctm(path: Path, refs: dict[str, Reference]) -> None:
    for lineno, _, s in _lines(path):
        f = s.split()
        if len(f) < 5:
            raise ReferenceError(f"{path}:{lineno}: a CTM line is `recording channel start duration word "
                                 f"[conf]`, got {len(f)} field(s)")
        t0, t1 = _times(path, lineno, f[2], f[3], is_duration=True)
        ref = _get(refs, f[0], path)
        ref.has_words = True
        ref.words.append((t0, t1, f[4]))


def _read_audacity(path: Path, refs: dict[str, Reference]) -> None:
    rid = path.name[: -len(path.suffix)]
    ref = _get(refs, rid, path)
    ref.has_nonspeech = True
    if "." in rid:
        ref.alt_ids.add(rid.split(".", 1)[0])  # bc000.labels.txt names bc000
    for lineno, line, s in _lines(path):
        if s.startswith("\\"):
            continue  # the frequency line of a spectral selection
        f = line.rstrip("\r\n").split("\t")
        if len(f) < 3:
            raise ReferenceError(f"{path}:{lineno}: an Audacity label line is `start<TAB>end<TAB>label`, "
                                 f"got {s!r}")
        t0, t1 = _times(path, lineno, f[0], f[1], is_duration=False)
        kind = nonspeech_kind("\t".join(f[2:]), path, lineno)
        if t1 > t0:
            ref.nonspeech.append((t0, t1, kind))


CSV_COLUMNS = ("recording", "start", "end", "label")


def _read_label_csv(path: Path, refs: dict[str, Reference]) -> None:
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceError(f"{path}: cannot read as CSV: {exc}") from None
    rows = [(i, r) for i, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    cols = list(range(4))
    if rows and not _is_number(rows[0][1][1] if len(rows[0][1]) > 1 else ""):
        header = [c.strip().lower() for c in rows[0][1]]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ReferenceError(f"{path}: a label CSV has the columns {','.join(CSV_COLUMNS)}; "
                                 f"missing {', '.join(missing)}")
        cols = [header.index(c) for c in CSV_COLUMNS]
        rows = rows[1:]
    for lineno, r in rows:
        if len(r) <= max(cols):
            raise ReferenceError(f"{path}:{lineno}: expected {','.join(CSV_COLUMNS)}, got {','.join(r)!r}")
        rid, start, end, label = (r[c].strip() for c in cols)
        t0, t1 = _times(path, lineno, start, end, is_duration=False)
        kind = nonspeech_kind(label, path, lineno)
        ref = _get(refs, rid, path)
        ref.has_nonspeech = True
        if t1 > t0:
            ref.nonspeech.append((t0, t1, kind))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# -- matching ---------------------------------------------------------------------------


def match_references(refs: dict[str, Reference], recordings: list[dict]) -> tuple[dict[str, Reference], list[str]]:
    """References per recording id, matched by recording id or by the stem of the recording's
    file name; also the reference ids that match no recording. Several references naming one
    recording (an RTTM and a label file, say) are merged."""
    by_id = {r["recording_id"]: r["recording_id"] for r in recordings}
    by_stem: dict[str, list[str]] = {}
    for r in recordings:
        by_stem.setdefault(Path(r["path"] or "").stem, []).append(r["recording_id"])
    matched: dict[str, Reference] = {}
    unmatched: list[str] = []
    for ref_id, ref in sorted(refs.items()):
        rid = None
        for key in (ref_id, *sorted(ref.alt_ids)):
            if key in by_id:
                rid = key
                break
            stems = by_stem.get(key, [])
            if len(stems) > 1:
                raise ReferenceError(f"reference {ref_id!r} matches the file stem of several recordings "
                                     f"({', '.join(sorted(stems))}); name it by recording id")
            if stems:
                rid = stems[0]
                break
        if rid is None:
            unmatched.append(ref_id)
            continue
        if rid in matched:
            matched[rid] = _merge(matched[rid], ref)
        else:
            matched[rid] = Reference(rid, list(ref.turns), list(ref.nonspeech), list(ref.words), ref.has_turns,
                                     ref.has_nonspeech, ref.has_words, set(ref.alt_ids), set(ref.sources))
    return matched, unmatched


def _merge(a: Reference, b: Reference) -> Reference:
    return Reference(a.recording, sorted(a.turns + b.turns), sorted(a.nonspeech + b.nonspeech),
                     sorted(a.words + b.words), a.has_turns or b.has_turns, a.has_nonspeech or b.has_nonspeech,
                     a.has_words or b.has_words, a.alt_ids | b.alt_ids, a.sources | b.sources)
