"""Checkpoints: atomic save, exact-resume state, and ``load_model(path)``.

A checkpoint is a ``torch.save`` dict::

    {"config": model config dict, "model": state_dict,           # always (load_model needs only these)
     "step": int, "optimizer": ..., "schedule": {...}, "args": {...},
     "rng": [per-rank RNG states], "data": {"batches_per_rank": int, ...},
     "hours_seen": float, "best_val": float, "world_size": int}  # training checkpoints

The gumbel temperature is a buffer, so it is part of ``model``. Checkpoints hold plain types
only (the numpy RNG state as ints), so they load with ``weights_only=True`` (``trainer.safe_load``).

Files are written to a temporary name in the same folder, flushed to disk and renamed, so a
crash never leaves a half-written checkpoint under a final name; a failed write (a full disk)
removes the temporary file and raises ``CheckpointSaveError``, and the previous checkpoints
stay as they were. ``resume_checkpoint`` picks the newest step checkpoint that loads and sets
damaged ones aside (``step_N.pt.damaged``, never deleted).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainer import safe_load
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining

CHECKPOINT_DIR = "checkpoints"
DAMAGED_SUFFIX = ".damaged"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
_DAMAGED_RE = re.compile(r"^step_(\d+)\.pt\.damaged(\.\d+)?$")
# what a training checkpoint must hold to be resumed from
TRAINING_KEYS = ("config", "model", "optimizer", "step", "rng")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (no space, no permission, I/O error)."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` via a temporary file, fsync and ``os.replace``.

    On failure the temporary file is removed and ``CheckpointSaveError`` names the reason;
    whatever ``path`` held before is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointSaveError(f"cannot write {path}: {_save_failure(e, path.parent)}") from None
    return path


_LOW_SPACE = 64 * 2**20


def _save_failure(e: BaseException, folder: Path) -> str:
    """Why a save failed, in words. torch's zip writer reports a full disk as a short write
    ("unexpected pos …", a RuntimeError), so little free space is taken to be the reason."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    low = free is not None and free < _LOW_SPACE
    if isinstance(e, OSError) and e.errno is not None:
        reason = os.strerror(e.errno).lower()
    elif low:
        reason = os.strerror(errno.ENOSPC).lower()
    else:
        reason = " ".join(str(e).split())[:200]
    return f"{reason} ({free / 2**20:.1f} MiB free)" if low else reason


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


def list_damaged_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step checkpoints set aside as damaged (``step_N.pt.damaged``)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(p for p in folder.iterdir() if _DAMAGED_RE.match(p.name)) if folder.is_dir() else []


def resume_point(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run starts from: the latest one with ``resume``, else None. A fresh
    start over an earlier run's checkpoints is refused: it would mix two runs in one folder."""
    found = list_step_checkpoints(run_dir)
    if (found or list_damaged_checkpoints(run_dir)) and not resume:
        raise ValueError(f"{run_dir} holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose another --out")
    return found[-1][1] if found else None


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``NAME.damaged`` (``.damaged.1`` … if taken); returns the new path."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{n}")
    os.replace(path, target)
    return target


def resume_checkpoint(run_dir: str | Path, resume: bool, *, trust: bool = False,
                      required: tuple[str, ...] = TRAINING_KEYS,
                      say: Callable[[str], None] = print) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) of the newest step checkpoint that loads, or (None, None) to start afresh.

    A checkpoint that cannot be read (truncated, corrupt, not a training checkpoint: it lacks
    one of ``required``) is reported through ``say`` and set aside; the next older one is
    tried. A file refused as unsafe (``trainer.safe_load``) is not damaged: that error is
    raised. When every checkpoint is damaged there is nothing to resume from: ``ValueError``
    (also on a rerun, so the run's log is never restarted from scratch by accident).
    """
    if resume_point(run_dir, resume) is None and not list_damaged_checkpoints(run_dir):
        return None, None
    for _, path in reversed(list_step_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path, trust=trust)
            lacking = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
            if lacking:
                raise ValueError(f"not a training checkpoint: it lacks {', '.join(lacking)}")
            return path, ckpt
        except safe_load.UnsafeCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, it is not resumable
            reason = getattr(e, "reason", None) or " ".join(str(e).split())[:200] or type(e).__name__
            try:
                aside = f"set aside as {set_aside(path).name}"
            except OSError as err:  # a read-only run folder: leave it, try the older one anyway
                aside = f"left in place (renaming failed: {os.strerror(err.errno) if err.errno else err})"
            say(f"checkpoint {path.name} cannot be read ({reason}): {aside}")
    names = ", ".join(p.name for p in list_damaged_checkpoints(run_dir))
    raise ValueError(f"{run_dir}/{CHECKPOINT_DIR} holds only damaged checkpoints ({names}): nothing to resume "
                     "from; move them away to start afresh, or choose another --out")


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints (``best.pt`` is never touched)."""
    if keep <= 0:
        return
    for _, path in list_step_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every RNG the training step touches: torch (CPU + CUDA), numpy and Python (plain types)."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    """``np.random.get_state()`` without numpy objects (the MT19937 key as an int64 tensor)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = (np_state["bit_generator"], np.asarray(np_state["key"], dtype=np.uint32), np_state["pos"],
                    np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)  # a tuple holding an ndarray in checkpoints of the earlier format
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The raw checkpoint dict (on CPU), read without running code from the file unless ``trust``
    (``trainer.safe_load``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return safe_load.load(path, trust=trust)


def plain_args(args: Any) -> dict[str, Any]:
    """A run's arguments (a dataclass) for its checkpoint: paths as strings, hooks left out."""
    import dataclasses

    def plain(v):
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (str, int, float, bool)) else repr(v)

    return {f.name: plain(getattr(args, f.name)) for f in dataclasses.fields(args) if f.name != "transform"}


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu", trust: bool = False):
    """A ``Wav2Vec2ForPreTraining`` with the weights of checkpoint ``path`` (eval mode).

    Accepts a training checkpoint, ``best.pt``, or a run directory (its latest checkpoint).
    The backbone for fine-tuning is ``model.wav2vec2``.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or (path / CHECKPOINT_DIR / "best.pt")
        path = found
    return model_from_checkpoint(load_checkpoint(path, trust=trust), path).to(map_location)


def model_from_checkpoint(ckpt: Any, path: str | Path = "the checkpoint"):
    """The ``Wav2Vec2ForPreTraining`` (eval mode) of a loaded checkpoint dict of ours."""
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a trainer checkpoint (needs 'config' and 'model'); "
                         "for HF or fairseq weights use trainer.hf.load_pretrained")
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()
