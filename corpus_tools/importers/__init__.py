"""Importers: standard speech / noise / music corpora → segments manifests.

Each importer reads a corpus in its usual on-disk layout and returns a segments manifest
(``corpus_tools.manifests.SEGMENTS_SCHEMA`` plus corpus-specific extra columns), so
``corpus shard`` and the simulation treat them like any curated broadcast data.

==============  ==========================================================================
librispeech     :mod:`~corpus_tools.importers.librispeech`
mls             :mod:`~corpus_tools.importers.mls` (Multilingual LibriSpeech)
commonvoice     :mod:`~corpus_tools.importers.commonvoice`
musan, fma      :mod:`~corpus_tools.importers.clips` (noise and music clips)
lhotse          a Lhotse CutSet / SupervisionSet + RecordingSet: :mod:`corpus_tools.lhotse_io`
==============  ==========================================================================

Speech importers write ``split`` = ``train`` | ``dev`` | ``test`` from the corpus' own layout
(null when the layout names none); ``corpus shard`` and ``corpus simulate`` write training
shards from train rows only (``corpus_tools.splits``). MUSAN and FMA clips have no split.
"""

from __future__ import annotations

import os
from typing import Callable

import polars as pl

from corpus_tools import lhotse_io
from corpus_tools.importers.clips import import_fma, import_musan, read_fma_tracks
from corpus_tools.importers.common import CorpusLayoutError
from corpus_tools.importers.commonvoice import import_commonvoice
from corpus_tools.importers.librispeech import import_librispeech
from corpus_tools.importers.mls import import_mls


def import_lhotse(root: str | os.PathLike, **kwargs) -> pl.DataFrame:
    """Lhotse manifests (a CutSet, a SupervisionSet + RecordingSet, or a folder of them):
    :func:`corpus_tools.lhotse_io.import_lhotse`, called as the other importers are."""
    return lhotse_io.import_lhotse(root, **kwargs)


IMPORTERS: dict[str, Callable[..., pl.DataFrame]] = {
    "librispeech": import_librispeech,
    "mls": import_mls,
    "commonvoice": import_commonvoice,
    "musan": import_musan,
    "fma": import_fma,
    "lhotse": import_lhotse,
}

__all__ = ["IMPORTERS", "CorpusLayoutError", "import_commonvoice", "import_fma", "import_librispeech",
           "import_lhotse", "import_mls", "import_musan", "read_fma_tracks"]
