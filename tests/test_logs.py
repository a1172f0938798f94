"""Quiet by default: `corpus` shows our progress and summaries, not the libraries' chatter;
`--verbose` / CORPUS_LOG=debug shows it; warnings about the user's data and models stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# what WhisperX, Lightning (via pyannote) and torchaudio print on a plain `corpus segment`
# (WhisperX's "Performing voice activity detection" is no longer printed at all: its VAD object
# is built around our one VAD model, segment.backends._shared_scores_vad_class)
NOISE = ("automatically upgraded your loaded checkpoint", "vad_method is ignored")


def corpus(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corpus_tools.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def short_work(root: Path) -> Path:
    from corpus_tools.audio import load_audio, write_audio
    from corpus_tools.samples import pyannote_sample_dir

    (root / "arch").mkdir(parents=True)
    write_audio(root / "arch" / "call.wav", load_audio(pyannote_sample_dir() / "sample.wav", 5.0, 11.0))
    res = corpus("ingest", root / "arch", "-o", root / "work")
    assert res.returncode == 0, res.stderr
    return root / "work"


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_segment_output_is_ours_unless_verbose(verbose, models_dir, tmp_path):
    work = short_work(tmp_path)  # a fresh work dir each time: cached stages load no model
    args = ["segment", work, "--method", "sad,wx-align", "--whisper-model", "base", "--models-dir", models_dir,
            "--device", "cpu", "--beam-size", "1", "--batch-size", "4"]
    res = corpus(*(["--verbose"] if verbose else []), *args, env={"CORPUS_LOG": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "segmented 1 recordings" in out and "wx-align" in res.stdout  # our summary
    # a notice about the user's models stays: no CTC aligner here, so Whisper's own alignment is used
    assert "--align-model whisper" in out
    found = [n for n in NOISE if n in out]
    if verbose:
        assert found == list(NOISE), f"--verbose hides {set(NOISE) - set(found)}"
    else:
        assert found == [], f"third-party noise in the default output: {found}\n{out}"
        assert " - INFO - " not in out


SCRIPT = """
import warnings
from corpus_tools import logs
logs.configure()
import lightning.pytorch  # brings Lightning's own log handler, as pyannote's import does
import torchaudio
torchaudio.set_audio_backend("soundfile")  # deprecated no-op: two UserWarnings from torchaudio
warnings.warn("3 files of your archive failed to decode")  # one about the data
import logging
logging.getLogger("lightning.pytorch.utilities.migration.utils").info("Lightning automatically upgraded your loaded checkpoint")
logging.getLogger("whisperx.asr").warning("Failed to align segment")
"""


@pytest.mark.parametrize("level", ["", "debug"])
def test_library_warnings_are_filtered_by_message_data_warnings_are_not(level):
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CORPUS_LOG": level, "PYTHONWARNINGS": ""})
    assert res.returncode == 0, res.stderr
    assert "failed to decode" in res.stderr and "Failed to align segment" in res.stderr
    shown = [s for s in ("set_audio_backend has been deprecated", "automatically upgraded")
             if s in res.stderr]
    assert shown == ([] if not level else ["set_audio_backend has been deprecated", "automatically upgraded"])
