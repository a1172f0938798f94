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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread in this process: on a shared 2-core machine more threads only wait
    for each other (pyannote VAD ran 10-20× slower with two). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_demucs(tmp_path_factory) -> Path:
    """A random-weight HTDemucs (1.4 M params) saved as Demucs saves models (klass/args/state),
    so `corpus stem` runs Demucs' real loading and separation code.

    segment=4 s keeps each apply_model chunk short (the default 10 s is ~5× slower on CPU).
    """
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=16, depth=4,
                     t_layers=1, nfft=4096, segment=4)
    args, kwargs = model._init_args_kwargs
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs,
               "state": get_state(model, None, half=False), "training_args": {}}
    path = tmp_path_factory.mktemp("demucs") / "tiny_htdemucs.th"
    torch.save(package, path)
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    """Shards of real speech (40 pieces of pyannote's sample.wav) for the bad-data tests."""
    from shard_damage import speech_shards

    return speech_shards(tmp_path_factory.mktemp("clean") / "shards")


@pytest.fixture(scope="module")
def damaged(clean, tmp_path_factory) -> dict:
    """A copy of ``clean`` with every kind of damage (see tests/shard_damage.py)."""
    from shard_damage import damage_folder

    return damage_folder(clean, tmp_path_factory.mktemp("damaged") / "shards")
