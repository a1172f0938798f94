"""Fine-tuning presets: the defaults and the label-budget recipes in ``trainer/configs/finetune_*.yaml``.

A preset holds a ``train:`` section (steps, batch seconds, learning rate, frozen steps, label hours,
...) and a ``model:`` section (dropout, masking); ``trainer.finetune.resolve_settings`` lays the
command line over it, and it over ``DEFAULT_TRAIN`` / ``DEFAULT_MODEL``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("10m", "1h", "10h", "100h", "960h")

# Defaults without a preset; a preset's `train:`/`model:` sections and then the command line override them.
DEFAULT_TRAIN: dict[str, Any] = dict(
    steps=20_000, batch_seconds=200.0, accumulation=1, lr=5e-5, freeze_transformer_steps=5_000,
    label_hours=None, log_every=100, val_every=1_000, ckpt_every=1_000, final_dropout=0.0,
)
DEFAULT_MODEL: dict[str, Any] = dict(dropout=0.1, attention_dropout=0.1, mask_prob=0.05, mask_length=10)


def preset_path(preset: str) -> Path:
    """``10m`` → ``trainer/configs/finetune_10m.yaml``; a path is taken as is."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"preset file not found: {p}")
        return p
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)} or a YAML file")
    return CONFIG_DIR / f"finetune_{preset}.yaml"


def load_preset(preset: str | None) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "train": {...}}`` of a preset (empty sections without one)."""
    if preset is None:
        return {"model": {}, "train": {}}
    path = preset_path(preset)
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"model", "train", "description"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}")
    bad = sorted(set(data.get("train") or {}) - set(DEFAULT_TRAIN))
    if bad:
        raise ValueError(f"{path}: unknown train keys {bad}; known: {sorted(DEFAULT_TRAIN)}")
    return {"model": dict(data.get("model") or {}), "train": dict(data.get("train") or {})}
