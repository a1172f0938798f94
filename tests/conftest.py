"""Shared fixtures: a small broadcast archive built from real packaged audio, offline models.

Everything runs offline: HF_HUB_OFFLINE is forced so a code path that tries to download
fails loudly instead of hanging.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory) -> Path:
    """Three broadcasts (wav, mp3, AAC-in-mp4) of ~100 s + metadata.csv + timelines.json."""
    from corpus_tools.samples import build_sample_archive

    return build_sample_archive(tmp_path_factory.mktemp("archive"), n_broadcasts=3)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models folder filled by `corpus models prepare-offline` (real packaged weights)."""
    from corpus_tools.models import prepare_offline

    dest = tmp_path_factory.mktemp("models")
    prepare_offline(dest)
    return dest
