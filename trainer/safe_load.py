"""Opening checkpoints without running their code.

A pickle can call any function while it is read, so a checkpoint from elsewhere can run
``os.system``. Every checkpoint the trainer reads goes through ``load``: ``torch.load`` with
``weights_only=True`` (tensors and plain containers only) plus a short allow-list of what the
checkpoints we read hold besides:

* ours: numpy's RNG state in checkpoints of the earlier format (new ones store it as plain
  ints) and ``pathlib`` paths in the saved arguments;
* fairseq: ``argparse.Namespace`` (legacy ``args``); omegaconf's ``DictConfig`` /
  ``ListConfig`` with their metadata and value nodes, ``typing.Any``, ``defaultdict`` and the
  builtin types the metadata names (``cfg``); numpy scalars (meters in ``extra_state``).

Anything else is refused with ``UnsafeCheckpointError``, naming what the file needs and the
opt-in (``--trust-checkpoint``, ``trust=True``) that loads it with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import pathlib
import pickle
import re
import typing
from pathlib import Path
from typing import Any

import torch

TRUST_FLAG = "--trust-checkpoint"


class UnsafeCheckpointError(ValueError):
    """The file needs more than plain types to load."""


class DamagedCheckpointError(ValueError):
    """The file cannot be read as a checkpoint (truncated, corrupt, not a torch file)."""

    def __init__(self, path, reason: str):
        self.reason = reason
        super().__init__(f"cannot read {path}: {reason} (a damaged file, or not a checkpoint)")


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


@functools.cache
def allowed_globals() -> tuple:
    """What ``weights_only`` loading may construct besides tensors and plain containers."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    allowed: list = [
        _reconstruct, scalar, np.ndarray, np.dtype,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),  # pickled by numpy 1.x
        (scalar, "numpy.core.multiarray.scalar"),
        argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath,
        collections.defaultdict, typing.Any, dict, list, tuple, set, int, float, str, bool, bytes,
    ]
    allowed += [type(np.dtype(t)) for t in ("u1", "u4", "i4", "i8", "f4", "f8", "b1")]
    try:
        from omegaconf import DictConfig, ListConfig, base, nodes
    except ImportError:  # no omegaconf: fairseq's DictConfig cfg is refused like any other class
        return tuple(allowed)
    allowed += [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata]
    allowed += [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                            "BytesNode", "PathNode") if hasattr(nodes, n)]
    return tuple(allowed)


@functools.cache
def _allowed_names() -> frozenset[str]:
    names = set()
    for entry in allowed_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return frozenset(names)


def load(path: str | Path, *, trust: bool = False, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """``torch.load`` of ``path`` that runs no code from the file unless ``trust``.

    Raises ``UnsafeCheckpointError`` for a file that needs more than the allow-list (the
    message names the classes and the opt-in flag), ``DamagedCheckpointError`` for one that
    cannot be read (truncated, a corrupt zip, not a torch file), ``FileNotFoundError``.
    """
    kwargs = {"map_location": map_location} if mmap is None else {"map_location": map_location, "mmap": mmap}
    if trust:
        try:
            return torch.load(path, weights_only=False, **kwargs)
        except FileNotFoundError:
            raise
        except (ModuleNotFoundError, AttributeError) as e:  # pickled classes of a package not installed
            raise ValueError(f"{path} needs Python code that is not installed to load ({e})") from None
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises for a damaged file
            raise DamagedCheckpointError(path, _reason(e)) from None
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return torch.load(path, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        needs = unsafe_globals(path, str(e))
        if needs:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds {', '.join(needs)}, which loading without running the "
                f"file's code does not allow (a pickle can execute code while it is read); pass {TRUST_FLAG} "
                f"if you trust where this file came from") from None
        raise DamagedCheckpointError(path, _reason(e)) from None
    except Exception as e:  # noqa: BLE001 - RuntimeError (zip), EOFError, OSError … of a damaged file
        raise DamagedCheckpointError(path, _reason(e)) from None


def unsafe_globals(path: str | Path, message: str = "") -> list[str]:
    """The classes and functions ``path`` would construct that the allow-list does not hold."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format) or damaged
        found = re.findall(r"GLOBAL ([\w.]+)", message)
    return sorted(set(found) - _allowed_names())


__all__ = ["TRUST_FLAG", "DamagedCheckpointError", "UnsafeCheckpointError", "allowed_globals", "load",
           "unsafe_globals"]
