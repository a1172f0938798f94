"""Importers: standard speech / noise / music corpora → segments manifests.

Each importer reads a corpus in its usual on-disk layout and returns a segments manifest
(``corpus_tools.manifests.SEGMENTS_SCHEMA`` plus corpus-specific extra columns), so
``corpus shard`` and the simulation treat them like any curated broadcast data.

==============  ==========================================================================
librispeech     ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` + ``SPEAKER-CHAPTER.trans.txt``;
                speaker, chapter → session, transcript; ``SPEAKERS.TXT`` gives gender.
mls             ``{split}/transcripts.txt`` + ``{split}/audio/SPK/BOOK/SPK_BOOK_UTT.flac``
                (``.opus`` in the opus release); book → session; ``metainfo.txt`` gender.
commonvoice     ``{lang}/{train,dev,test,...}.tsv`` + ``{lang}/clips/*.mp3`` (v18 columns);
                durations from ``clip_durations.tsv`` when present, else probed.
musan           ``noise/{free-sound,sound-bible}/*.wav`` (+ ``music``/``speech`` on request);
                ``ANNOTATIONS`` per folder; a categories CSV adds technical/ambient/crowd.
fma             ``fma_*/NNN/NNNNNN.mp3`` + ``fma_metadata/tracks.csv`` (three header rows)
                and ``genres.csv`` → genre_top, genres.
lhotse          a Lhotse CutSet / SupervisionSet + RecordingSet (any recipe's output);
                see :mod:`corpus_tools.lhotse_io`.
==============  ==========================================================================

Every utterance/clip of the layouts above (all but lhotse, whose supervisions say where they
are) is one segment spanning its whole file (``start = 0``), with the
duration read from the file header (soundfile; FFmpeg for the rest).

Speech importers write ``split`` = ``train`` | ``dev`` | ``test`` from the corpus' own layout
(null when the layout names none); ``corpus shard`` and ``corpus simulate`` write training
shards from train rows only (``corpus_tools.splits``). MUSAN and FMA clips have no split.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from corpus_tools.manifests import SEGMENTS_SCHEMA, ManifestError, conform

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


# -- shared helpers -----------------------------------------------------------------------


def audio_duration(path: str | os.PathLike) -> float | None:
    """Seconds of audio in ``path`` from its header; None when it cannot be read."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:
        pass
    from corpus_tools.audio import AudioError, probe

    try:
        return probe(path).duration
    except AudioError:
        return None


def durations(paths: Sequence[str], workers: int = 4, progress: bool = False) -> list[float | None]:
    """``audio_duration`` for many files (threads: soundfile and ffprobe release the GIL)."""
    if not paths:
        return []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="file", desc="reading durations", dynamic_ncols=True)
    out: list[float | None] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for d in pool.map(audio_duration, paths, chunksize=64):
            out.append(d)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _finish(rows: list[dict], name: str, workers: int, progress: bool,
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


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    p = Path(root)
    if not p.is_dir():
        raise CorpusLayoutError(f"{what}: not a directory: {p}")
    return p


def _find_audio(folder: Path, stem: str) -> Path | None:
    for ext in AUDIO_EXT:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def _pipe_table(path: Path, columns: Sequence[str]) -> dict[str, dict[str, str]]:
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


def _layout_split(folder: str) -> str | None:
    """train | dev | test from a split folder's name (train-clean-100, dev, test_other, ...)."""
    m = re.match(r"^(train|dev|test)(?:[-_.]|$)", folder.lower())
    return m.group(1) if m else None


# -- LibriSpeech --------------------------------------------------------------------------


def import_librispeech(root: str | os.PathLike, *, workers: int = 4,
                       progress: bool = False) -> pl.DataFrame:
    """LibriSpeech (any split folder, or the root holding several).

    Columns: speaker, session = chapter id, text, language ``en``; extras ``chapter``,
    ``subset`` (e.g. train-clean-100), ``split`` (train-* → train, dev-* → dev, test-* →
    test, null for other folder names) and ``gender`` (from SPEAKERS.TXT when found).
    """
    root = _require_dir(root, "librispeech")
    trans = sorted(root.rglob("*.trans.txt"))
    if not trans:
        raise CorpusLayoutError(f"no LibriSpeech SPEAKER-CHAPTER.trans.txt files under {root}")
    speakers: dict[str, dict[str, str]] = {}
    for cand in [root, *root.parents[:2]]:
        speakers = _pipe_table(cand / "SPEAKERS.TXT", ("id", "sex", "subset", "minutes", "name"))
        if speakers:
            break
    rows, missing = [], 0
    for t in trans:
        folder = t.parent
        chapter_dir, speaker_dir = folder.name, folder.parent.name
        subset = folder.parent.parent.name
        for line in t.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            audio = _find_audio(folder, utt)
            if audio is None:
                missing += 1
                continue
            spk, chapter = (utt.split("-") + ["", ""])[:2]
            spk = spk or speaker_dir
            chapter = chapter or chapter_dir
            rows.append({"segment_id": utt, "recording_id": utt, "path": str(audio.resolve()),
                         "text": text.strip(), "speaker": spk, "language": "en",
                         "session": chapter, "chapter": chapter, "subset": subset,
                         "split": _layout_split(subset),
                         "gender": (speakers.get(spk) or {}).get("sex")})
    if missing:
        log.warning("librispeech: %d transcript lines have no audio file", missing)
    return _finish(rows, "librispeech", workers, progress)


# -- Multilingual LibriSpeech -------------------------------------------------------------


def _mls_language(root: Path) -> str | None:
    for part in (root.name, root.parent.name):
        m = re.match(r"mls_([a-z]+)", part.lower())
        if m and m.group(1) in MLS_LANGUAGES:
            return MLS_LANGUAGES[m.group(1)]
    return None


def import_mls(root: str | os.PathLike, *, language: str | None = None,
               splits: Sequence[str] | None = None, workers: int = 4,
               progress: bool = False) -> pl.DataFrame:
    """Multilingual LibriSpeech (e.g. ``mls_dutch``; flac or opus release).

    ``root`` holds ``train``/``dev``/``test`` folders (or is one of them). Columns:
    speaker, session = ``SPK_BOOK``, text; extras ``book``, ``split`` (the folder: train, dev
    or test), ``gender``.
    The language comes from ``language`` or the folder name (mls_dutch → nl).
    """
    root = _require_dir(root, "mls")
    if (root / "transcripts.txt").is_file():
        split_dirs = [root]
        lang_root = root.parent
    else:
        split_dirs = sorted(p for p in root.iterdir() if (p / "transcripts.txt").is_file())
        lang_root = root
    if splits:
        split_dirs = [p for p in split_dirs if p.name in set(splits)]
    if not split_dirs:
        raise CorpusLayoutError(f"no MLS {{split}}/transcripts.txt under {root}")
    language = language or _mls_language(lang_root)
    meta = _pipe_table(lang_root / "metainfo.txt",
                       ("speaker", "gender", "partition", "minutes", "book", "title", "chapter"))
    rows, missing = [], 0
    for split_dir in split_dirs:
        for line in (split_dir / "transcripts.txt").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition("\t")
            parts = utt.split("_")
            if len(parts) < 3:
                log.warning("mls: unexpected utterance id %r", utt)
                continue
            spk, book = parts[0], parts[1]
            audio = _find_audio(split_dir / "audio" / spk / book, utt)
            if audio is None:
                missing += 1
                continue
            rows.append({"segment_id": utt, "recording_id": utt, "path": str(audio.resolve()),
                         "text": text.strip(), "speaker": spk, "language": language,
                         "session": f"{spk}_{book}", "book": book,
                         "split": _layout_split(split_dir.name),
                         "gender": (meta.get(spk) or {}).get("gender")})
    if missing:
        log.warning("mls: %d transcript lines have no audio file", missing)
    return _finish(rows, "mls", workers, progress)


# -- Common Voice -------------------------------------------------------------------------

CV_DEFAULT_SPLITS = ("train", "dev", "test")


def _read_tsv(path: Path) -> pl.DataFrame:
    # Common Voice sentences contain quotes: read without quoting, everything as text.
    return pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False,
                       truncate_ragged_lines=True)


def import_commonvoice(root: str | os.PathLike, *, splits: Sequence[str] = CV_DEFAULT_SPLITS,
                       language: str | None = None, workers: int = 4,
                       progress: bool = False) -> pl.DataFrame:
    """Common Voice (v18 layout): ``root`` is a language folder with ``*.tsv`` + ``clips/``.

    A clip listed in several tsv files is kept once (first tsv in ``splits`` order), its tsv
    in ``cv_list``. ``split``: a clip listed in ``dev.tsv`` / ``test.tsv`` is dev / test
    wherever else it is listed (``validated.tsv`` holds dev and test clips too), so those two
    files are read even when not asked for; every other clip is train.
    Columns: speaker = client_id, text = sentence, language = locale (or the folder name);
    extras ``split``, ``cv_list``, ``gender``, ``age``, ``accents``, ``variant``,
    ``up_votes``, ``down_votes``, ``sentence_id``.
    """
    root = _require_dir(root, "commonvoice")
    if not (root / "clips").is_dir():
        subs = [p for p in root.iterdir() if (p / "clips").is_dir()] if root.is_dir() else []
        if len(subs) == 1:
            root = subs[0]
        else:
            raise CorpusLayoutError(f"{root} is not a Common Voice language folder (no clips/); "
                               f"point at e.g. cv-corpus-18.0-.../nl")
    known: dict[str, float] = {}
    dur_file = root / "clip_durations.tsv"
    if dur_file.is_file():
        d = _read_tsv(dur_file)
        if d.width >= 2:
            clip_col, ms_col = d.columns[0], d.columns[1]
            for clip, ms in zip(d[clip_col].to_list(), d[ms_col].to_list()):
                try:
                    known[str((root / "clips" / clip).resolve())] = float(ms) / 1000.0
                except (TypeError, ValueError):
                    continue
    tables: dict[str, pl.DataFrame] = {}

    def table(name: str) -> pl.DataFrame | None:
        tsv = root / f"{name}.tsv"
        if name not in tables and tsv.is_file():
            tables[name] = _read_tsv(tsv)
            if "path" not in tables[name].columns or "sentence" not in tables[name].columns:
                raise CorpusLayoutError(f"{tsv} lacks the Common Voice columns path/sentence")
        return tables.get(name)

    held_out = {}  # clip -> dev | test (test wins should a clip be in both)
    for name in ("dev", "test"):
        t = table(name)
        if t is not None:
            held_out.update((clip, name) for clip in t["path"].to_list() if clip)
    rows, seen, missing = [], set(), 0
    found_any = False
    for split in splits:
        df = table(split)
        if df is None:
            log.warning("commonvoice: %s.tsv not found; skipped", split)
            continue
        found_any = True
        for r in df.iter_rows(named=True):
            clip = r["path"]
            if not clip or clip in seen:
                continue
            seen.add(clip)
            audio = root / "clips" / clip
            if not audio.is_file():
                missing += 1
                continue
            rows.append({"segment_id": Path(clip).stem, "recording_id": Path(clip).stem,
                         "path": str(audio.resolve()), "text": r.get("sentence") or "",
                         "speaker": r.get("client_id"),
                         "language": r.get("locale") or language or root.name,
                         "session": r.get("client_id"), "split": held_out.get(clip, "train"),
                         "cv_list": split,
                         **{k: r.get(k) for k in ("gender", "age", "accents", "variant",
                                                  "up_votes", "down_votes", "sentence_id")}})
    if not found_any:
        raise CorpusLayoutError(f"none of {', '.join(s + '.tsv' for s in splits)} in {root}")
    if missing:
        log.warning("commonvoice: %d listed clips are missing from clips/", missing)
    return _finish(rows, "commonvoice", workers, progress, known)


# -- MUSAN --------------------------------------------------------------------------------

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
    root = _require_dir(root, "musan")
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
                rows.append({"segment_id": f.stem, "recording_id": f.stem,
                             "path": str(f.resolve()), "text": "", "speaker": None,
                             "language": None, "session": None, "subset": subset,
                             "source": folder.name, "annotation": a,
                             "background": (a is not None) if subset == "noise" else None,
                             "category": cats.get(f.stem)})
    if not rows:
        raise CorpusLayoutError(f"no audio files in {', '.join(subsets)} under {root}")
    return _finish(rows, "musan", workers, progress)


# -- FMA ----------------------------------------------------------------------------------


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
    root = _require_dir(root, "fma")
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
            rows.append({"segment_id": f"fma-{tid:06d}", "recording_id": f"fma-{tid:06d}",
                         "path": str(f.resolve()), "text": "", "speaker": None,
                         "language": t.get("track.language_code") or None, "session": None,
                         "track_id": tid, "genre_top": t.get("track.genre_top") or None,
                         "genres": "|".join(genres.get(g, g) for g in ids) or None,
                         "fma_subset": t.get("set.subset") or None,
                         "fma_split": t.get("set.split") or None,
                         "artist": t.get("artist.name") or None,
                         "title": t.get("track.title") or None})
    if not rows:
        raise CorpusLayoutError(f"no FMA clips (NNN/NNNNNN.mp3) under {audio_root}")
    return _finish(rows, "fma", workers, progress)


def import_lhotse(root: str | os.PathLike, **kwargs) -> pl.DataFrame:
    """Lhotse manifests (a CutSet, a SupervisionSet + RecordingSet, or a folder of them):
    see :func:`corpus_tools.lhotse_io.import_lhotse`."""
    from corpus_tools.lhotse_io import import_lhotse as read

    return read(root, **kwargs)


IMPORTERS: dict[str, Callable[..., pl.DataFrame]] = {
    "librispeech": import_librispeech,
    "mls": import_mls,
    "commonvoice": import_commonvoice,
    "musan": import_musan,
    "fma": import_fma,
    "lhotse": import_lhotse,
}

__all__ = ["IMPORTERS", "LANGUAGE_CODES", "audio_duration", "import_commonvoice", "import_fma",
           "import_librispeech", "import_lhotse", "import_mls", "import_musan", "language_code",
           "read_fma_tracks"]
