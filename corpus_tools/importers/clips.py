"""Noise and music clip corpora for the data-quality simulation: MUSAN and FMA.

MUSAN: ``noise/{free-sound,sound-bible}/*.wav`` (+ ``music``/``speech`` on request),
``ANNOTATIONS`` per folder; a categories CSV adds technical/ambient/crowd. FMA:
``fma_*/NNN/NNNNNN.mp3`` + ``fma_metadata/tracks.csv`` (three header rows) and ``genres.csv``
→ genre_top, genres. Clips have no split.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import polars as pl

from corpus_tools.importers.common import (AUDIO_EXT, CorpusLayoutError, finish, require_dir,
                                           segment_row)

log = logging.getLogger(__name__)

MUSAN_SUBSETS = ("noise", "music", "speech")
MUSAN_CATEGORIES = ("technical", "ambient", "crowd")


def _musan_annotations(folder: Path) -> dict[str, str]:
    """``ANNOTATIONS``: one line per file id, optionally followed by annotation fields."""
    out: dict[str, str] = {}
    p = folder / "ANNOTATIONS"
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(None, 1)
        if parts:
            out[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return out


def _read_categories(path: str | os.PathLike) -> dict[str, str]:
    """A CSV/TSV ``id,category`` (id = file stem) mapping files to technical/ambient/crowd."""
    p = Path(path)
    sep = "\t" if p.suffix == ".tsv" else ","
    df = pl.read_csv(p, separator=sep, infer_schema=False)
    if df.width < 2:
        raise CorpusLayoutError(f"{p}: expected two columns id,category")
    id_col, cat_col = df.columns[0], df.columns[1]
    out = {}
    for i, c in zip(df[id_col].to_list(), df[cat_col].to_list()):
        c = (c or "").strip().lower()
        if c not in MUSAN_CATEGORIES:
            raise CorpusLayoutError(f"{p}: category {c!r} for {i} is not one of "
                                    f"{', '.join(MUSAN_CATEGORIES)}")
        out[Path(i).stem] = c
    return out


def import_musan(root: str | os.PathLike, *, subsets: Sequence[str] = ("noise",),
                 categories: str | os.PathLike | None = None, workers: int = 4,
                 progress: bool = False) -> pl.DataFrame:
    """MUSAN (``root`` = the ``musan`` folder); by default the noise subset only.

    Extras: ``subset`` (noise/music/speech), ``source`` (free-sound, sound-bible, fma, ...),
    ``annotation`` (the file's ANNOTATIONS fields, "" when listed without fields, null when
    unlisted — for noise, Kaldi reads a listed file as background noise), ``background``
    (listed in a noise ANNOTATIONS file) and ``category``. MUSAN itself does not label
    its noise files technical/ambient/crowd (the three kinds the thesis names); pass
    ``categories`` (CSV ``id,category``) to add them, else ``category`` is null.
    """
    root = require_dir(root, "musan")
    if root.name in MUSAN_SUBSETS and not (root / root.name).is_dir():
        subsets, root = [root.name], root.parent
    bad = [s for s in subsets if s not in MUSAN_SUBSETS]
    if bad:
        raise CorpusLayoutError(f"unknown MUSAN subset(s) {bad}: use {', '.join(MUSAN_SUBSETS)}")
    cats = _read_categories(categories) if categories else {}
    rows = []
    for subset in subsets:
        base = root / subset
        if not base.is_dir():
            raise CorpusLayoutError(f"no {subset}/ folder in {root} (is this the musan folder?)")
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            ann = _musan_annotations(folder)
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() not in AUDIO_EXT:
                    continue
                a = ann.get(f.stem)
                rows.append(segment_row(
                    f.stem, f, subset=subset, source=folder.name, annotation=a,
                    background=(a is not None) if subset == "noise" else None,
                    category=cats.get(f.stem)))
    if not rows:
        raise CorpusLayoutError(f"no audio files in {', '.join(subsets)} under {root}")
    return finish(rows, "musan", workers, progress)


def read_fma_tracks(path: str | os.PathLike) -> dict[int, dict]:
    """``tracks.csv``: three header rows (group, field, ``track_id``) → {track_id: fields}.

    Field names are ``group.field`` (``track.genre_top``, ``set.subset``, ...).
    """
    out: dict[int, dict] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        groups = next(reader)
        fields = next(reader)
        next(reader)  # "track_id,,,,"
        names = [f"{g}.{f}" if g else f for g, f in zip(groups, fields)]
        for row in reader:
            if not row or not row[0].strip().isdigit():
                continue
            out[int(row[0])] = dict(zip(names[1:], row[1:]))
    return out


def read_fma_genres(path: str | os.PathLike) -> dict[str, str]:
    """``genres.csv``: genre_id → title."""
    if not Path(path).is_file():
        return {}
    df = pl.read_csv(path, infer_schema=False)
    if "genre_id" not in df.columns or "title" not in df.columns:
        return {}
    return dict(zip(df["genre_id"].to_list(), df["title"].to_list()))


def _genre_ids(text: str | None) -> list[str]:
    return re.findall(r"\d+", text or "")


def import_fma(root: str | os.PathLike, *, metadata: str | os.PathLike | None = None,
               workers: int = 4, progress: bool = False) -> pl.DataFrame:
    """FMA clips (``fma_large``/``fma_medium``/...: ``NNN/NNNNNN.mp3``) with genre metadata.

    ``root`` is the audio folder or the folder holding it and ``fma_metadata``. Extras:
    ``track_id``, ``genre_top``, ``genres`` (all genres, ``|``-separated titles),
    ``fma_subset``, ``fma_split``, ``artist``, ``title``. Clips without a row in
    tracks.csv are kept with null genre.
    """
    root = require_dir(root, "fma")
    audio_root = root
    if not any(p.is_dir() and re.fullmatch(r"\d{3}", p.name) for p in root.iterdir()):
        cands = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("fma_")
                       and p.name != "fma_metadata")
        if not cands:
            raise CorpusLayoutError(f"no FMA audio folders (NNN/NNNNNN.mp3) under {root}")
        audio_root = cands[0]
    if metadata is None:
        for cand in (root / "fma_metadata", audio_root.parent / "fma_metadata"):
            if (cand / "tracks.csv").is_file():
                metadata = cand
                break
    tracks: dict[int, dict] = {}
    genres: dict[str, str] = {}
    if metadata is not None:
        meta = Path(metadata)
        tracks_csv = meta / "tracks.csv" if meta.is_dir() else meta
        tracks = read_fma_tracks(tracks_csv)
        genres = read_fma_genres(tracks_csv.parent / "genres.csv")
    else:
        log.warning("fma: no fma_metadata/tracks.csv found; genres will be empty")
    rows = []
    for folder in sorted(p for p in audio_root.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in AUDIO_EXT or not f.stem.isdigit():
                continue
            tid = int(f.stem)
            t = tracks.get(tid, {})
            ids = _genre_ids(t.get("track.genres_all") or t.get("track.genres"))
            rows.append(segment_row(
                f"fma-{tid:06d}", f, language=t.get("track.language_code") or None,
                track_id=tid, genre_top=t.get("track.genre_top") or None,
                genres="|".join(genres.get(g, g) for g in ids) or None,
                fma_subset=t.get("set.subset") or None, fma_split=t.get("set.split") or None,
                artist=t.get("artist.name") or None, title=t.get("track.title") or None))
    if not rows:
        raise CorpusLayoutError(f"no FMA clips (NNN/NNNNNN.mp3) under {audio_root}")
    return finish(rows, "fma", workers, progress)
