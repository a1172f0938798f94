"""Write a torch checkpoint into a models folder atomically, with bytes that do not depend on
where or when it was written (a model's fingerprint is its files' content).

``torch.save`` names the zip archive's root folder after the file it writes, so saving straight
to a per-process temporary name (:func:`corpus_tools.atomic.atomic_path`) would put that random
name inside the file. The checkpoint is therefore saved as ``<name>.tmp`` (root folder
``<name>``, as every earlier version wrote it) in a private hidden folder beside the target,
then moved into place through :func:`~corpus_tools.atomic.atomic_path` (fsync, rename).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from corpus_tools.atomic import atomic_path


def save_checkpoint(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / f"{path.name}.tmp"
        torch.save(obj, staged)
        with atomic_path(path) as tmp:
            os.replace(staged, tmp)
    return path
