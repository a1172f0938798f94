"""The condition table: which degradations exist and the global knobs they share.

The table is data, ``manifests/simulation_conditions.yaml``: fixed names (``baseline``,
``1spk-concat``) and ``X`` patterns (``mix-noise-X``: X % of each batch), each with an
operation, an interferer source and, for speech partners, a partner rule. This module parses
it once per path and turns a condition name into a :class:`Condition`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from corpus_tools.audio import SAMPLE_RATE

CONDITIONS_FILE = Path(__file__).resolve().parents[2] / "manifests" / "simulation_conditions.yaml"
OPS = ("none", "concat", "mix", "sub")
SOURCES = ("speech", "noise", "music", "instr", "vocal")
PARTNER_RULES = ("same-session", "different-speaker")
# The Simulator option that provides each interferer source.
SOURCE_OPTION = {"noise": "noise", "music": "music", "instr": "stems", "vocal": "stems"}


@dataclass(frozen=True)
class Settings:
    """Global knobs of the condition table (``manifests/simulation_conditions.yaml``)."""

    snr_db: tuple[float, float]
    frame: int  # samples per activity frame
    threshold_db: float  # active = within this many dB of the loudest frame
    floor: float  # ... and mean square above this (power, not dB)
    headroom_peak: float  # mixtures peaking above this are scaled down as a whole
    specs: tuple[dict, ...]  # the `conditions` entries


@dataclass(frozen=True)
class Condition:
    """A parsed condition name, e.g. ``mix-noise-33`` → op=mix, source=noise, percent=33."""

    name: str
    op: str  # none | concat | mix | sub
    source: str | None = None  # speech | noise | music | instr | vocal
    partner: str | None = None  # same-session | different-speaker (speech only)
    percent: int = 0  # share of each batch's training utterances that is modified

    @property
    def option(self) -> str | None:
        """Which ``Simulator``/CLI option supplies this condition's interferer, if any."""
        return SOURCE_OPTION.get(self.source or "")


@lru_cache(maxsize=8)
def _load_settings(path: str) -> Settings:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"simulation condition table not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    lo, hi = (float(v) for v in raw.get("snr_db", (0.0, 15.0)))
    ap = raw.get("active_power", {}) or {}
    specs = tuple(dict(s) for s in raw.get("conditions", ()))
    for s in specs:
        if s.get("op") not in OPS or ("name" in s) == ("pattern" in s):
            raise ValueError(f"{p}: bad condition entry {s} (needs name or pattern, op in {OPS})")
        if s.get("source") is not None and s["source"] not in SOURCES:
            raise ValueError(f"{p}: unknown source {s['source']!r} in {s}")
        if s.get("partner") is not None and s["partner"] not in PARTNER_RULES:
            raise ValueError(f"{p}: unknown partner rule {s['partner']!r} in {s}")
    return Settings(
        snr_db=(lo, hi),
        frame=int(round(float(ap.get("frame_ms", 20)) * SAMPLE_RATE / 1000)),
        threshold_db=float(ap.get("threshold_db", 40.0)),
        floor=10.0 ** (float(ap.get("floor_dbfs", -100.0)) / 10.0),
        headroom_peak=float(raw.get("headroom_peak", 0.99)),
        specs=specs,
    )


def load_settings(path: str | Path | None = None) -> Settings:
    """The condition table, parsed once per path."""
    return _load_settings(str(Path(path or CONDITIONS_FILE).resolve()))


def valid_condition_names(settings: Settings | None = None) -> list[str]:
    """Fixed names and ``X`` patterns, in table order (used in error messages and --help)."""
    settings = settings or load_settings()
    return [s.get("name") or s["pattern"] for s in settings.specs]


def parse_condition(name: str | Condition, *, settings: Settings | None = None) -> Condition:
    """Parse ``baseline``, ``1spk-concat``, ``mix-noise-33``, ...; ValueError lists valid names."""
    if isinstance(name, Condition):
        return name
    settings = settings or load_settings()
    text = str(name).strip().lower()
    for spec in settings.specs:
        fields = dict(op=spec["op"], source=spec.get("source"), partner=spec.get("partner"))
        if "name" in spec:
            if text == spec["name"]:
                percent = int(spec.get("percent", 0 if spec["op"] == "none" else 100))
                return Condition(name=spec["name"], percent=percent, **fields)
            continue
        prefix = spec["pattern"][: -len("X")] if spec["pattern"].endswith("X") else None
        if prefix is None:
            raise ValueError(f"condition pattern must end in X: {spec['pattern']!r}")
        m = re.fullmatch(re.escape(prefix) + r"(\d+)", text)
        if m:
            percent = int(m.group(1))
            if not 1 <= percent <= 100:
                raise ValueError(
                    f"condition {name!r}: X must be an integer percent 1..100, got {percent}; "
                    f"valid: {', '.join(valid_condition_names(settings))}")
            return Condition(name=f"{prefix}{percent}", percent=percent, **fields)
    valid = ", ".join(valid_condition_names(settings))
    raise ValueError(
        f"unknown simulation condition {name!r}; valid: {valid} (X = integer percent 1..100, "
        f"e.g. mix-noise-33)")


def count_selected(n: int, percent: float) -> int:
    """X % of ``n`` utterances rounded half up, at least one (when there is any), at most n."""
    if n <= 0:
        return 0
    return min(n, max(1, math.floor(n * percent / 100.0 + 0.5)))
