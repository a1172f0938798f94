"""What every importer shares: the layout error, row building, durations, language codes.

Every utterance or clip of the file-per-utterance layouts is one segment spanning its whole
file (``start = 0``), with the duration read from the file header (soundfile; FFmpeg for the
rest). Files that cannot be read or hold no audio are left out with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import polars as pl
import soundfile as sf

from corpus_tools.audio import AudioError, probe
from corpus_tools.manifests import SEGMENTS_SCHEMA, ManifestError, conform
from corpus_tools.progress import progress_bar

log = logging.getLogger(__name__)

AUDIO_EXT = (".flac", ".wav", ".opus", ".mp3", ".ogg", ".m4a")

# MLS release folder names (mls_dutch, mls_dutch_opus, ...) → ISO 639-1.
MLS_LANGUAGES = {"dutch": "nl", "english": "en", "german": "de", "french": "fr",
                 "spanish": "es", "italian": "it", "portuguese": "pt", "polish": "pl"}
# Language names as corpora and Lhotse recipes write them ("English", "dutch") → ISO 639-1.
LANGUAGE_CODES = {**MLS_LANGUAGES, "flemish": "nl", "chinese": "zh", "mandarin": "zh",
                  "cantonese": "yue", "japanese": "ja", "korean": "ko", "russian": "ru",
                  "arabic": "ar", "hindi": "hi", "turkish": "tr", "swedish": "sv",
                  "danish": "da", "norwegian": "no", "finnish": "fi", "czech": "cs",
                  "greek": "el", "hungarian": "hu", "romanian": "ro", "ukrainian": "uk",
                  "vietnamese": "vi", "thai": "th", "indonesian": "id", "persian": "fa",
                  "hebrew": "he", "catalan": "ca", "basque": "eu", "welsh": "cy",
                  "irish": "ga", "tamil": "ta", "urdu": "ur", "bengali": "bn", "swahili": "sw"}


def language_code(value: str | None) -> str | None:
    """ISO 639-1 for a language name ("English" → "en"); codes and unknown names as given."""
    if value is None or not str(value).strip():
        return None
    return LANGUAGE_CODES.get(str(value).strip().lower(), str(value).strip())


class CorpusLayoutError(ManifestError):
    """The directory does not look like the corpus it was given as."""


def require_dir(root: str | os.PathLike, what: str) -> Path:
    p = Path(root)
    if not p.is_dir():
        raise CorpusLayoutError(f"{what}: not a directory: {p}")
    return p


def segment_row(segment_id: str, path: Path, *, text: str = "", speaker: str | None = None,
                language: str | None = None, session: str | None = None, **extra) -> dict:
    """One whole-file segment (its own recording); ``extra`` columns follow in the given order."""
    return {"segment_id": segment_id, "recording_id": segment_id, "path": str(path.resolve()),
            "text": text, "speaker": speaker, "language": language, "session": session, **extra}


def audio_duration(path: str | os.PathLike) -> float | None:
    """Seconds of audio in ``path`` from its header; None when it cannot be read."""
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:
        pass
    try:
        return probe(path).duration
    except AudioError:
        return None


def durations(paths: Sequence[str], workers: int = 4, progress: bool = False) -> list[float | None]:
    """``audio_duration`` for many files (threads: soundfile and ffprobe release the GIL)."""
    if not paths:
        return []
    out: list[float | None] = []
    with progress_bar(disable=None if progress else True) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        task = bar.add_task("reading durations", total=len(paths), info="")
        for d in pool.map(audio_duration, paths, chunksize=64):
            out.append(d)
            bar.advance(task)
    return out


def finish(rows: list[dict], name: str, workers: int, progress: bool,
           known: dict[str, float] | None = None) -> pl.DataFrame:
    """Fill in durations, drop unreadable files, and shape rows as a segments manifest."""
    known = known or {}
    todo = [r["path"] for r in rows if r["path"] not in known]
    found = dict(zip(todo, durations(todo, workers, progress)))
    kept, bad = [], 0
    for r in rows:
        d = known.get(r["path"], found.get(r["path"]))
        if d is None or d <= 0:
            bad += 1
            continue
        kept.append({**r, "start": 0.0, "end": float(d), "duration": float(d), "method": name})
    if bad:
        log.warning("%s: skipped %d unreadable or empty audio files", name, bad)
    if not kept:
        return conform(pl.DataFrame(schema=SEGMENTS_SCHEMA), SEGMENTS_SCHEMA)
    df = pl.DataFrame(kept, infer_schema_length=None)
    return conform(df, SEGMENTS_SCHEMA).sort("segment_id")


def find_audio(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` with the first audio extension that exists."""
    for ext in AUDIO_EXT:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def pipe_table(path: Path, columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Read LibriSpeech/MLS ``|``-separated info tables (``;`` comments) keyed by column 0."""
    out: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2 or parts[0].upper() == columns[0].upper():
            continue  # header row
        out[parts[0]] = dict(zip(columns, parts))
    return out


def layout_split(folder: str) -> str | None:
    """train | dev | test from a split folder's name (train-clean-100, dev, test_other, ...)."""
    m = re.match(r"^(train|dev|test)(?:[-_.]|$)", folder.lower())
    return m.group(1) if m else None
