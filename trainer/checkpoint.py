"""Checkpoints: atomic save, exact-resume state, and ``load_model(path)``.

A checkpoint is a ``torch.save`` dict::

    {"config": model config dict, "model": state_dict,           # always (load_model needs only these)
     "step": int, "optimizer": ..., "schedule": {...}, "args": {...},
     "rng": [per-rank RNG states], "data": {"batches_per_rank": int, ...},
     "hours_seen": float, "best_val": float, "world_size": int}  # training checkpoints

The gumbel temperature is a buffer, so it is part of ``model``. Files are written to a
temporary name in the same folder and renamed, so a crash never leaves a half-written
checkpoint under a final name.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` via a temporary file + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def step_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def list_step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in ``run_dir``, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The step checkpoint with the highest step, or None."""
    found = list_step_checkpoints(run_dir)
    return found[-1][1] if found else None


def resume_point(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run starts from: the latest one with ``resume``, else None. A fresh
    start over an earlier run's checkpoints is refused: it would mix two runs in one folder."""
    found = list_step_checkpoints(run_dir)
    if found and not resume:
        raise ValueError(f"{run_dir} holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose another --out")
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints (``best.pt`` is never touched)."""
    if keep <= 0:
        return
    for _, path in list_step_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every RNG the training step touches: torch (CPU + CUDA), numpy and Python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (on CPU)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our checkpoints hold RNG states and plain Python objects; they are trusted local files.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu"):
    """A ``Wav2Vec2ForPreTraining`` with the weights of checkpoint ``path`` (eval mode).

    Accepts a training checkpoint, ``best.pt``, or a run directory (its latest checkpoint).
    The backbone for fine-tuning is ``model.wav2vec2``.
    """
    from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or (path / CHECKPOINT_DIR / "best.pt")
        path = found
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a trainer checkpoint (needs 'config' and 'model'); "
                         "for HF or fairseq weights use trainer.hf.load_pretrained")
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()
