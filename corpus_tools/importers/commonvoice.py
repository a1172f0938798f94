"""Common Voice (v18): ``{lang}/{train,dev,test,validated,...}.tsv`` + ``{lang}/clips/*.mp3``.

Durations come from ``clip_durations.tsv`` when present, else from the clip headers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import polars as pl

from corpus_tools.importers.common import CorpusLayoutError, finish, require_dir, segment_row

log = logging.getLogger(__name__)

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
    root = require_dir(root, "commonvoice")
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
            rows.append(segment_row(
                Path(clip).stem, audio, text=r.get("sentence") or "", speaker=r.get("client_id"),
                language=r.get("locale") or language or root.name, session=r.get("client_id"),
                split=held_out.get(clip, "train"), cv_list=split,
                **{k: r.get(k) for k in ("gender", "age", "accents", "variant", "up_votes",
                                         "down_votes", "sentence_id")}))
    if not found_any:
        raise CorpusLayoutError(f"none of {', '.join(s + '.tsv' for s in splits)} in {root}")
    if missing:
        log.warning("commonvoice: %d listed clips are missing from clips/", missing)
    return finish(rows, "commonvoice", workers, progress, known)
