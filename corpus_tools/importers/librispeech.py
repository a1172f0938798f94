"""LibriSpeech: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` + ``SPEAKER-CHAPTER.trans.txt``.

Speaker, chapter → session, transcript; ``SPEAKERS.TXT`` gives gender; the subset folder
(train-clean-100, dev-clean, ...) gives the split.
"""

from __future__ import annotations

import logging
import os

import polars as pl

from corpus_tools.importers.common import (CorpusLayoutError, find_audio, finish, layout_split,
                                           pipe_table, require_dir, segment_row)

log = logging.getLogger(__name__)


def import_librispeech(root: str | os.PathLike, *, workers: int = 4,
                       progress: bool = False) -> pl.DataFrame:
    """LibriSpeech (any split folder, or the root holding several).

    Columns: speaker, session = chapter id, text, language ``en``; extras ``chapter``,
    ``subset`` (e.g. train-clean-100), ``split`` (train-* → train, dev-* → dev, test-* →
    test, null for other folder names) and ``gender`` (from SPEAKERS.TXT when found).
    """
    root = require_dir(root, "librispeech")
    trans = sorted(root.rglob("*.trans.txt"))
    if not trans:
        raise CorpusLayoutError(f"no LibriSpeech SPEAKER-CHAPTER.trans.txt files under {root}")
    speakers: dict[str, dict[str, str]] = {}
    for cand in [root, *root.parents[:2]]:
        speakers = pipe_table(cand / "SPEAKERS.TXT", ("id", "sex", "subset", "minutes", "name"))
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
            audio = find_audio(folder, utt)
            if audio is None:
                missing += 1
                continue
            spk, chapter = (utt.split("-") + ["", ""])[:2]
            spk = spk or speaker_dir
            chapter = chapter or chapter_dir
            rows.append(segment_row(utt, audio, text=text.strip(), speaker=spk, language="en",
                                    session=chapter, chapter=chapter, subset=subset,
                                    split=layout_split(subset),
                                    gender=(speakers.get(spk) or {}).get("sex")))
    if missing:
        log.warning("librispeech: %d transcript lines have no audio file", missing)
    return finish(rows, "librispeech", workers, progress)
