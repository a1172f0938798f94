"""Multilingual LibriSpeech: ``{split}/transcripts.txt`` + ``{split}/audio/SPK/BOOK/*.flac``.

The opus release has ``.opus`` files instead; book → session; ``metainfo.txt`` gives gender;
the language comes from the release folder's name (``mls_dutch`` → nl).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import polars as pl

from corpus_tools.importers.common import (MLS_LANGUAGES, CorpusLayoutError, find_audio, finish,
                                           layout_split, pipe_table, require_dir, segment_row)

log = logging.getLogger(__name__)


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
    root = require_dir(root, "mls")
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
    meta = pipe_table(lang_root / "metainfo.txt",
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
            audio = find_audio(split_dir / "audio" / spk / book, utt)
            if audio is None:
                missing += 1
                continue
            rows.append(segment_row(utt, audio, text=text.strip(), speaker=spk,
                                    language=language, session=f"{spk}_{book}", book=book,
                                    split=layout_split(split_dir.name),
                                    gender=(meta.get(spk) or {}).get("gender")))
    if missing:
        log.warning("mls: %d transcript lines have no audio file", missing)
    return finish(rows, "mls", workers, progress)
