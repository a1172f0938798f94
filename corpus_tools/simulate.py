"""Data-quality simulation on LibriSpeech (thesis §6.2.2, Table 13).

One implementation, two modes:

* **online** — the trainer passes a :class:`Simulator` as ``ShardBatchStream(transform=...)``;
  it receives each training batch as ``list[Utterance]`` plus a ``numpy`` Generator and returns
  the degraded list (new ``Utterance`` objects; the inputs are never mutated);
* **offline** — ``corpus simulate`` (``corpus_tools/commands/simulate.py``) forms the same
  duration batches with :func:`corpus_tools.reader.duration_batches`, calls the very same
  :class:`Simulator` with :func:`batch_rng` ``(seed, batch_index)`` and writes listenable shards.

The condition table (names, operations, sources, SNR range, activity threshold) is data:
``manifests/simulation_conditions.yaml``. Rules (see ``docs/simulate.md``):

* selection is per batch: ``count_selected(n, X)`` = X % of the batch's training utterances
  rounded half up, never fewer than one; concat conditions apply to every utterance;
* mixing SNR is uniform in [0, 15] dB, measured on the **active** power of both signals
  (:func:`active_power`: mean square over 20 ms frames within 40 dB of the loudest frame);
* substitutions are cropped (random offset) or repeated (random start) to the exact length;
* speech partners come from the same batch when one fits the rule, else from the source pool;
* concatenation doubles the audio, so concat batches are formed on half the budget
  (``length_growth``) and a concatenation is cut to ``min(max_utterance_seconds,
  batch_seconds / rows)`` — the same rule online and offline, and never over the budget;
* utterances whose ``split`` is dev or test (``corpus_tools.splits``) are never touched.

Every per-utterance choice is written to ``meta["simulation"]`` (sample offsets are in
samples at 16 kHz), so an offline shard says exactly what was done to each utterance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from corpus_tools.splits import canonical, is_held_out, select

SAMPLE_RATE = 16_000
CONDITIONS_FILE = Path(__file__).resolve().parents[1] / "manifests" / "simulation_conditions.yaml"
OPS = ("none", "concat", "mix", "sub")
SOURCES = ("speech", "noise", "music", "instr", "vocal")
PARTNER_RULES = ("same-session", "different-speaker")
# The Simulator option that provides each interferer source.
SOURCE_OPTION = {"noise": "noise", "music": "music", "instr": "stems", "vocal": "stems"}
_MAX_DRAWS = 10  # re-draws for an unusable interferer (unreadable clip or silent crop)


# -- the condition table ----------------------------------------------------------------


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
    def fraction(self) -> float:
        return self.percent / 100.0

    @property
    def option(self) -> str | None:
        """Which ``Simulator``/CLI option supplies this condition's interferer, if any."""
        return SOURCE_OPTION.get(self.source or "")


@lru_cache(maxsize=8)
def _load_settings(path: str) -> Settings:
    import yaml

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


# -- pure signal helpers ----------------------------------------------------------------


def count_selected(n: int, percent: float) -> int:
    """X % of ``n`` utterances rounded half up, at least one (when there is any), at most n."""
    if n <= 0:
        return 0
    return min(n, max(1, math.floor(n * percent / 100.0 + 0.5)))


def frame_powers(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean square of non-overlapping frames; a trailing partial frame is its own frame."""
    m = x.size // frame
    full = x[: m * frame].reshape(m, frame)
    # float32 accumulation over one 20 ms frame is exact enough and 4× faster than float64
    powers = np.einsum("ij,ij->i", full, full).astype(np.float64) / frame
    tail = x[m * frame:]
    if tail.size:
        powers = np.append(powers, float(np.dot(tail, tail)) / tail.size)
    return powers


def active_power(x: np.ndarray, settings: Settings | None = None) -> float:
    """Power of the active part of ``x``: mean square over frames that are active.

    A frame (20 ms) is active when its mean square is within ``threshold_db`` (40 dB) of the
    loudest frame and above the absolute floor (-100 dBFS). Speech pauses, leading/trailing
    silence and zero padding are thereby excluded, for speech and interferer alike, so that
    an SNR reads as "how loud is the interferer while it sounds, next to the speech while
    it is spoken". Returns 0.0 for an empty or silent signal. Scale invariant above the floor.
    """
    settings = settings or load_settings()
    if x.size == 0:
        return 0.0
    p = frame_powers(np.asarray(x, dtype=np.float32), settings.frame)
    top = float(p.max())
    if top <= settings.floor:
        return 0.0
    active = p >= max(settings.floor, top * 10.0 ** (-settings.threshold_db / 10.0))
    # weight frames by their length (the tail frame may be short)
    sizes = np.full(p.size, settings.frame, dtype=np.float64)
    tail = x.size % settings.frame
    if tail:
        sizes[-1] = tail
    return float(np.dot(p[active], sizes[active]) / sizes[active].sum())


def measure_snr(speech: np.ndarray, interference: np.ndarray,
                settings: Settings | None = None) -> float:
    """SNR in dB between two signals by :func:`active_power` (the definition mixing uses)."""
    ps, pn = active_power(speech, settings), active_power(interference, settings)
    if pn <= 0:
        return math.inf
    if ps <= 0:
        return -math.inf
    return 10.0 * math.log10(ps / pn)


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Crop (random offset) or repeat (random start, cyclic) ``x`` to exactly ``n`` samples.

    Returns ``(y, offset, repeats)``: ``y[k] == x[(offset + k) % len(x)]``; ``repeats`` is how
    many times ``x`` (partly) occurs in ``y`` (1 for a crop).
    """
    if x.size == 0:
        raise ValueError("cannot fit an empty signal to a length")
    if x.size >= n:
        offset = int(rng.integers(0, x.size - n + 1))
        return x[offset:offset + n].copy(), offset, 1
    offset = int(rng.integers(0, x.size))
    reps = math.ceil((offset + n) / x.size)
    return np.tile(x, reps)[offset:offset + n].copy(), offset, reps


def place(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Fit a speech partner into ``n`` samples without repeating it.

    Longer partners are cropped at a random offset; shorter ones are put at a random position
    with silence around them. Returns ``(y, offset_into_x, position_in_y)``.
    """
    if x.size >= n:
        offset = int(rng.integers(0, x.size - n + 1))
        return x[offset:offset + n].copy(), offset, 0
    position = int(rng.integers(0, n - x.size + 1))
    y = np.zeros(n, dtype=np.float32)
    y[position:position + x.size] = x
    return y, 0, position


def mix_at_snr(speech: np.ndarray, interferer: np.ndarray, snr_db: float,
               settings: Settings | None = None, *, interferer_power: float | None = None,
               inplace: bool = False) -> tuple[np.ndarray, float, float]:
    """``gain * (speech + scale * interferer)`` with the interferer at ``snr_db`` below the speech.

    ``scale`` sets the SNR on active power; ``gain`` (≤ 1) only kicks in when the mixture would
    peak above ``headroom_peak`` and scales speech and interferer alike (the SNR is unchanged),
    so that 16-bit shards never clip. Returns ``(mixture, scale, gain)``. ``inplace`` lets the
    mixture reuse the (float32) interferer's buffer; ``interferer_power`` skips measuring it.
    """
    settings = settings or load_settings()
    ps = active_power(speech, settings)
    pn = active_power(interferer, settings) if interferer_power is None else interferer_power
    if pn <= 0:
        raise ValueError("interferer is silent")
    # a silent utterance has no SNR to honour: mix the interferer at its own level
    scale = 1.0 if ps <= 0 else math.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    if inplace and interferer.dtype == np.float32:
        y = np.multiply(interferer, np.float32(scale), out=interferer)
    else:
        y = interferer.astype(np.float32) * np.float32(scale)
    y += speech
    peak = max(float(y.max(initial=0.0)), -float(y.min(initial=0.0)))
    gain = 1.0
    if peak > settings.headroom_peak:
        gain = settings.headroom_peak / peak
        y *= np.float32(gain)
    return y.astype(np.float32, copy=False), scale, gain


def batch_rng(seed: int, batch_index: int, consumer: int = 0, workers: int = 1
              ) -> np.random.Generator:
    """The Generator for batch ``batch_index`` of a run seeded ``seed``.

    It is the one ``ShardBatchStream`` hands its transform (``default_rng([seed, 0x7A,
    consumer, workers, index])`` in ``corpus_tools/reader.py``), so the offline command and a
    single-process training stream give a batch at the same index the same degradation.
    """
    return np.random.default_rng([int(seed), 0x7A, int(consumer), int(workers), int(batch_index)])


def is_validation(meta: dict | None) -> bool:
    """True when an utterance's ``split`` (or ``extra.split``) is dev or test: the thesis does
    "not apply the data quality simulation to the validation data", and test data is never
    trained on."""
    return is_held_out(meta)


def _set_transcript(meta: dict, text: str) -> None:
    """Set the transcript, and nanow2v2's ``transcription`` when the json has one: the
    same text in the letter vocabulary, as `corpus shard` writes it."""
    meta["transcript"] = text
    if "transcription" in meta:
        from corpus_tools.shards import letter_transcript

        meta["transcription"] = letter_transcript(text, meta.get("language"))


# -- interferer pools -------------------------------------------------------------------


class _LRU:
    """A tiny least-recently-used cache of decoded clips (audio is loaded lazily)."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self.items: OrderedDict[Any, np.ndarray] = OrderedDict()

    def get(self, key, load):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = load()
        if self.size:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def _manifest_rows(path: str | Path, corpus: str | None = None) -> list[dict]:
    """Rows of a manifest (parquet/csv, or a work dir holding one segments manifest).

    A folder that holds no manifest is imported on the fly with ``corpus import``'s
    importer for ``corpus`` (librispeech | musan | fma), so ``--source LibriSpeech/`` works;
    importing once with ``corpus import`` and passing the manifest is faster for big sets.
    """
    from corpus_tools.manifests import ManifestError, read_manifest, resolve_segments_source

    try:
        manifest = resolve_segments_source(path, None)
    except ManifestError:
        if corpus is None or not Path(path).is_dir():
            raise
        from corpus_tools.importers import IMPORTERS

        return IMPORTERS[corpus](path).to_dicts()
    df = read_manifest(manifest, None, "clip")
    if "path" not in df.columns:
        raise ValueError(f"manifest {path} has no 'path' column")
    return df.to_dicts()


def _clip_id(row: dict, i: int) -> str:
    for col in ("segment_id", "clip_id", "recording_id", "id"):
        if row.get(col) is not None:
            return str(row[col])
    return f"{Path(str(row['path'])).stem}#{i}"


class ClipPool:
    """Noise, music or stem clips: ``id``, ``path``, ``start``, ``end``; decoded on first use.

    Clips are decoded to 16 kHz mono with :func:`corpus_tools.audio.load_audio` and kept in a
    small LRU cache (``cache_size`` clips), so the online mode never holds a corpus in memory.
    """

    def __init__(self, entries: list[dict], kind: str, cache_size: int = 32):
        if not entries:
            raise ValueError(f"the {kind} pool is empty")
        self.entries = entries
        self.kind = kind
        self.cache_size = cache_size
        self._cache = _LRU(cache_size)

    @classmethod
    def from_manifest(cls, path: str | Path, kind: str, cache_size: int = 32) -> "ClipPool":
        rows = _manifest_rows(path, {"noise": "musan", "music": "fma"}.get(kind))
        entries = [dict(id=_clip_id(r, i), path=str(r["path"]), start=r.get("start"),
                        end=r.get("end")) for i, r in enumerate(rows)]
        return cls(entries, kind, cache_size)

    @classmethod
    def from_stems(cls, stem_dir: str | Path, which: str, cache_size: int = 32) -> "ClipPool":
        """Stems written by ``corpus stem``; ``which`` = instr | vocal (usable vocals only)."""
        import polars as pl

        table = Path(stem_dir) / "stems.parquet" if Path(stem_dir).is_dir() else Path(stem_dir)
        if not table.exists():
            raise FileNotFoundError(
                f"no stems manifest at {table}: run `corpus stem FMA_MANIFEST -o STEM_DIR` first")
        df = pl.read_parquet(table)
        col = "instrumental_path" if which == "instr" else "vocal_path"
        df = df.filter(pl.col(col).is_not_null())
        if which == "vocal":
            df = df.filter(pl.col("usable_vocal"))
        base = table.parent
        entries = [dict(id=str(r["clip_id"]), path=str(base / r[col]), start=None, end=None)
                   for r in df.select("clip_id", col).to_dicts()]
        if not entries:
            raise ValueError(f"{table} has no {'usable vocal' if which == 'vocal' else which} "
                             "stems")
        return cls(entries, which, cache_size)

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self):  # DataLoader workers get the table, not the cache
        state = self.__dict__.copy()
        state["_cache"] = _LRU(self.cache_size)
        return state

    def load(self, i: int) -> np.ndarray:
        from corpus_tools.audio import load_audio

        e = self.entries[i]
        return self._cache.get(i, lambda: load_audio(e["path"], e["start"], e["end"], SAMPLE_RATE))

    def draw(self, rng: np.random.Generator, n: int, settings: Settings
             ) -> tuple[dict, np.ndarray, int, int, float]:
        """A random clip fitted to ``n`` samples: ``(entry, audio, offset, repeats, power)``.

        Unreadable clips and silent crops are re-drawn (a few times) so that a selected
        utterance is always modified.
        """
        last_error = None
        for _ in range(_MAX_DRAWS):
            i = int(rng.integers(0, len(self.entries)))
            try:
                clip = self.load(i)
            except Exception as exc:  # an unreadable clip should not stop a training run
                last_error = exc
                continue
            if clip.size == 0:
                continue
            y, offset, reps = fit_length(clip, n, rng)
            power = active_power(y, settings)
            if power > 0:
                return self.entries[i], y.astype(np.float32, copy=False), offset, reps, power
        raise RuntimeError(f"no usable {self.kind} clip after {_MAX_DRAWS} draws"
                           + (f" (last error: {last_error})" if last_error else ""))


# -- the speech partner pool ------------------------------------------------------------


def read_shard_audio(loc: tuple[str, int, int]) -> np.ndarray:
    from corpus_tools.audio import decode_audio_bytes

    path, offset, size = loc
    with open(path, "rb") as fh:
        fh.seek(offset)
        audio, sr = decode_audio_bytes(fh.read(size))
    if sr != SAMPLE_RATE:
        from corpus_tools.audio import _resample

        audio = _resample(audio, sr, SAMPLE_RATE)
    return audio


class SpeechPool:
    """Utterances a speech partner can come from when the batch has none that fits the rule.

    Built from a segments manifest (``speaker``; ``session`` = LibriSpeech chapter) or from
    WebDataset shards (their json ``speaker``/``session``); audio is read only when picked.
    """

    def __init__(self, entries: list[dict]):
        self.entries = entries
        self.by_session: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            if e.get("session") is not None:
                self.by_session.setdefault(e["session"], []).append(i)

    @classmethod
    def from_source(cls, source: str | Path | Sequence[str]) -> "SpeechPool":
        shards = _shard_paths(source)
        if shards:
            from corpus_tools.reader import read_shard_records

            entries = []
            for shard in shards:
                for rec in read_shard_records(shard):
                    meta = rec.meta
                    if is_validation(meta) or rec.offset < 0:
                        continue
                    entries.append(dict(id=str(meta.get("id", rec.key)), key=rec.key,
                                        speaker=_str(meta.get("speaker")),
                                        session=_session_of(meta),
                                        text=meta.get("transcript", ""),
                                        loc=(shard, rec.offset, rec.size)))
            return cls(entries)
        rows = [r for r in _manifest_rows(source, "librispeech") if not is_validation(r)]
        return cls([dict(id=str(r.get("segment_id")), key=str(r.get("segment_id")),
                         speaker=_str(r.get("speaker")),
                         session=_session_of({"session": r.get("session"),
                                              "recording": r.get("recording_id")}),
                         text=r.get("text") or "", path=str(r["path"]), start=r.get("start"),
                         end=r.get("end")) for r in rows])

    @classmethod
    def from_items(cls, items: Sequence["SourceItem"]) -> "SpeechPool":
        """The pool of an already listed source (offline mode: no second pass over it)."""
        entries = []
        for it in items:
            if is_validation(it.meta):
                continue
            e = dict(id=str(it.meta.get("id", it.key)), key=it.key,
                     speaker=_str(it.meta.get("speaker")), session=_session_of(it.meta),
                     text=it.meta.get("transcript", ""))
            if it.loc is not None:
                e["loc"] = it.loc
            else:
                e.update(path=it.path, start=it.start, end=it.end)
            entries.append(e)
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> np.ndarray:
        e = self.entries[i]
        if "loc" in e:
            return read_shard_audio(e["loc"])
        from corpus_tools.audio import load_audio

        return load_audio(e["path"], e["start"], e["end"], SAMPLE_RATE)

    def pick(self, rule: str, meta: dict, own_ids: set[str],
             rng: np.random.Generator) -> int | None:
        """Index of a random pool utterance that fits ``rule`` for ``meta``, or None."""
        if rule == "same-session":
            key = _session_of(meta)
            cands = [i for i in self.by_session.get(key, ()) if self.entries[i]["id"] not in own_ids]
            return cands[int(rng.integers(0, len(cands)))] if cands else None
        speaker = _str(meta.get("speaker"))
        if speaker is None:
            return None
        # rejection sampling is O(1) on a real corpus (many speakers); fall back to a scan
        for _ in range(16):
            i = int(rng.integers(0, len(self.entries)))
            s = self.entries[i].get("speaker")
            if s is not None and s != speaker:
                return i
        cands = [i for i, e in enumerate(self.entries)
                 if e.get("speaker") is not None and e["speaker"] != speaker]
        return cands[int(rng.integers(0, len(cands)))] if cands else None


def _str(v) -> str | None:
    return None if v is None else str(v)


def _session_of(meta: dict) -> str | None:
    """LibriSpeech chapter; when a meta has no session, its recording stands in for it."""
    return _str(meta.get("session") if meta.get("session") is not None else meta.get("recording"))


def _shard_paths(source) -> list[str]:
    """Tar shards named by ``source`` (dir of tars, glob, a .tar, or a list); [] otherwise."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    p = Path(source)
    if p.is_dir():  # as corpus_tools.reader.list_shards: top level first, else recursive
        tars = sorted(str(t) for t in p.glob("*.tar") if not t.name.startswith("."))
        return tars or sorted(str(t) for t in p.rglob("*.tar") if not t.name.startswith("."))
    if p.suffix == ".tar" and p.exists():
        return [str(p)]
    if any(ch in str(source) for ch in "*?["):
        import glob

        return sorted(glob.glob(str(source)))
    return []


# -- the simulator ----------------------------------------------------------------------


def _utt_id(u) -> str:
    return str((u.meta or {}).get("id", u.key))


class Simulator:
    """Apply one condition to a batch of utterances: the ``ShardBatchStream`` transform.

    ``noise`` / ``music``: clip manifests (``corpus import musan|fma``); ``stems``: a ``corpus
    stem`` output folder; ``source``: the speech pool for partners the batch cannot provide
    (a segments manifest or the training shards) — without it, concat / 2spk-mix partners come
    from the batch only and an utterance with none stays unmodified (``reason`` in its json).
    ``seed`` is used only when ``__call__`` gets no Generator (then batch k uses
    ``batch_rng(seed, k)``, k counting calls).

    ``batch_seconds`` / ``max_utterance_seconds`` are the batch budget (padding included) and
    the longest utterance of the stream the transform serves; they must match its
    ``ShardBatchStream``. A concat condition has ``length_growth = 2``: the stream forms its
    batches on half the budget, and each concatenation is cut to
    :meth:`length_cap` ``(rows)`` samples, so rows × longest stays within ``batch_seconds``.
    """

    def __init__(self, condition: str | Condition, *, noise: str | Path | None = None,
                 music: str | Path | None = None, stems: str | Path | None = None,
                 seed: int = 0, source: str | Path | Sequence[str] | None = None,
                 cache_size: int = 32, settings: Settings | None = None,
                 batch_seconds: float = 150.0, max_utterance_seconds: float = 30.0):
        self.settings = settings or load_settings()
        self.condition = parse_condition(condition, settings=self.settings)
        self.seed = int(seed)
        if batch_seconds <= 0 or max_utterance_seconds <= 0:
            raise ValueError("batch_seconds and max_utterance_seconds must be positive")
        self.batch_seconds = float(batch_seconds)
        self.max_utterance_seconds = float(max_utterance_seconds)
        self.calls = 0
        given = {"noise": noise, "music": music, "stems": stems}
        need = self.condition.option
        if need is not None and given[need] is None:
            raise ValueError(f"condition {self.condition.name} needs --{need} "
                             f"({'a clip manifest' if need != 'stems' else 'a corpus stem folder'})")
        self.interferers: ClipPool | None = None
        src = self.condition.source
        if src == "noise":
            self.interferers = ClipPool.from_manifest(noise, "noise", cache_size)
        elif src == "music":
            self.interferers = ClipPool.from_manifest(music, "music", cache_size)
        elif src in ("instr", "vocal"):
            self.interferers = ClipPool.from_stems(stems, src, cache_size)
        self.source = source
        self._pool: SpeechPool | None = None  # built on first need (indexing shards takes a while)

    # -- helpers --

    @property
    def pool(self) -> SpeechPool | None:
        if self._pool is None and self.source is not None:
            self._pool = SpeechPool.from_source(self.source)
        return self._pool

    def __repr__(self) -> str:
        return f"Simulator({self.condition.name!r}, seed={self.seed})"

    @property
    def length_growth(self) -> float:
        """How much longer the condition makes an utterance at most (concat: twice)."""
        return 2.0 if self.condition.op == "concat" else 1.0

    def length_cap(self, rows: int) -> int:
        """Samples a concatenation may hold in a batch of ``rows`` utterances."""
        budget = int(self.batch_seconds * SAMPLE_RATE) // max(1, rows)
        return min(int(self.max_utterance_seconds * SAMPLE_RATE), budget)

    def select(self, utts: Sequence, rng: np.random.Generator) -> list[int]:
        """Indices (ascending) of the utterances this batch modifies."""
        eligible = [i for i, u in enumerate(utts) if not is_validation(u.meta)]
        if self.condition.op == "none" or not eligible:
            return []
        k = count_selected(len(eligible), self.condition.percent)
        if k >= len(eligible):
            return eligible
        return sorted(int(i) for i in rng.choice(eligible, size=k, replace=False))

    # -- the transform --

    def __call__(self, utts: list, rng: np.random.Generator | None = None) -> list:
        if rng is None:
            rng = batch_rng(self.seed, self.calls)
        self.calls += 1
        selected = set(self.select(utts, rng))
        out = []
        for i, u in enumerate(utts):
            meta = dict(u.meta or {})
            record: dict[str, Any] = {"condition": self.condition.name, "modified": False}
            audio = u.audio
            if is_validation(meta):
                record["reason"] = "validation data is never degraded"
            elif i in selected:
                result = self._apply(i, utts, rng, meta, record)
                if result is not None:
                    audio = result
                    record["modified"] = "reason" not in record  # a cut without a partner
            meta["simulation"] = record
            out.append(dataclasses.replace(u, audio=audio, meta=meta))
        return out

    def _apply(self, i: int, utts: list, rng: np.random.Generator, meta: dict,
               record: dict) -> np.ndarray | None:
        c = self.condition
        speech = np.asarray(utts[i].audio, dtype=np.float32)
        n = speech.size
        record["op"] = c.op
        record["source"] = c.source
        if n == 0:
            record["reason"] = "empty utterance"
            return None
        if c.source == "speech":
            partner = self._partner(i, utts, rng, record)
            if partner is None:
                return None
            if c.op == "concat":
                return self._concat(speech, partner, len(utts), meta, record)
            record.pop("_partner_text", None)
            fitted, offset, position = place(partner, n, rng)
            power = active_power(fitted, self.settings)
            if power <= 0:
                record["reason"] = "partner is silent"
                return None
            snr = float(rng.uniform(*self.settings.snr_db))
            y, scale, gain = mix_at_snr(speech, fitted, snr, self.settings,
                                        interferer_power=power, inplace=True)
            record.update(snr_db=snr, scale=scale, gain=gain, interferer_offset=offset,
                          position=position, repeats=1)
            return y
        assert self.interferers is not None
        entry, fitted, offset, reps, power = self.interferers.draw(rng, n, self.settings)
        record.update(interferer_id=entry["id"], interferer_offset=offset, repeats=reps)
        if c.op == "sub":
            record["original_transcript"] = meta.get("transcript")
            _set_transcript(meta, "")
            return fitted.astype(np.float32, copy=False)
        snr = float(rng.uniform(*self.settings.snr_db))
        y, scale, gain = mix_at_snr(speech, fitted, snr, self.settings, interferer_power=power,
                                    inplace=True)
        record.update(snr_db=snr, scale=scale, gain=gain)
        return y

    def _concat(self, speech: np.ndarray, partner: np.ndarray, rows: int, meta: dict,
                record: dict) -> np.ndarray | None:
        """``speech`` then ``partner``, cut to the length cap of a batch of ``rows``."""
        cap = self.length_cap(rows)
        own = min(speech.size, cap)
        kept = min(partner.size, cap - own)
        record.update(boundary=own, partner_num_frames=int(partner.size),
                      partner_kept_frames=int(kept), length_cap=cap)
        partner_text = record.pop("_partner_text", None)
        if kept <= 0:
            record["reason"] = "no room for a partner under the length cap"
            if own == speech.size:
                return None
            y = speech[:own].copy()  # longer than the cap itself (offline only)
        else:
            y = np.concatenate([speech[:own], partner[:kept]])
            texts = [t for t in (meta.get("transcript"), partner_text) if t]
            _set_transcript(meta, " ".join(texts))
        meta["num_frames"] = int(y.size)
        meta["duration"] = y.size / SAMPLE_RATE
        return y

    def _partner(self, i: int, utts: list, rng: np.random.Generator,
                 record: dict) -> np.ndarray | None:
        """A partner utterance's audio by the condition's rule: batch first, then the pool."""
        rule = self.condition.partner
        meta = utts[i].meta or {}
        own = _utt_id(utts[i])
        cands = [j for j, v in enumerate(utts)
                 if j != i and not is_validation(v.meta) and _utt_id(v) != own
                 and np.asarray(v.audio).size > 0 and _fits(rule, meta, v.meta or {})]
        if cands:
            j = cands[int(rng.integers(0, len(cands)))]
            v = utts[j]
            record.update(partner_id=_utt_id(v), partner_from="batch",
                          partner_speaker=_str((v.meta or {}).get("speaker")),
                          partner_session=_session_of(v.meta or {}),
                          _partner_text=(v.meta or {}).get("transcript"))
            return np.asarray(v.audio, dtype=np.float32)
        pool = self.pool
        k = pool.pick(rule, meta, {own}, rng) if pool is not None else None
        if k is None:
            record["reason"] = (f"no {rule} partner in the batch"
                                + (" or the source pool" if pool is not None else
                                   " (no source pool given)"))
            return None
        e = pool.entries[k]
        audio = pool.load(k)
        if audio.size == 0:
            record["reason"] = f"partner {e['id']} has no audio"
            return None
        record.update(partner_id=e["id"], partner_from="pool", partner_speaker=e.get("speaker"),
                      partner_session=e.get("session"), _partner_text=e.get("text"))
        return audio


def _fits(rule: str | None, meta: dict, other: dict) -> bool:
    if rule == "same-session":
        s = _session_of(meta)
        return s is not None and s == _session_of(other)
    if rule == "different-speaker":
        a, b = _str(meta.get("speaker")), _str(other.get("speaker"))
        return a is not None and b is not None and a != b
    return True


def summarize(utts: Iterable) -> list[dict]:
    """One flat row per utterance of ``meta["simulation"]`` (for the offline summary table)."""
    rows = []
    for u in utts:
        rec = dict((u.meta or {}).get("simulation", {}))
        rec["key"] = u.key
        rows.append(rec)
    return rows


# -- offline mode: degraded shards --------------------------------------------------------


@dataclass
class SourceItem:
    """One source utterance before decoding: its shard-json meta and where its audio is."""

    key: str
    meta: dict
    seconds: float
    path: str | None = None  # a media file (segments manifest) ...
    start: float | None = None
    end: float | None = None
    loc: tuple[str, int, int] | None = None  # ... or (shard, byte offset, size)

    def load(self) -> np.ndarray:
        if self.loc is not None:
            return read_shard_audio(self.loc)
        from corpus_tools.audio import load_audio

        return load_audio(self.path, self.start, self.end, SAMPLE_RATE)


def source_items(source: str | Path | Sequence[str]) -> list[SourceItem]:
    """The utterances of a segments manifest or of WebDataset shards, in source order."""
    shards = _shard_paths(source)
    if shards:
        from corpus_tools.reader import read_shard_records

        items = []
        for shard in shards:
            for rec in read_shard_records(shard):
                if rec.offset < 0:
                    raise ValueError(f"{shard}: compressed shards are not supported as a source")
                sr = int(rec.meta.get("sample_rate", SAMPLE_RATE))
                items.append(SourceItem(rec.key, dict(rec.meta), rec.num_frames / sr,
                                        loc=(shard, rec.offset, rec.size)))
        return items
    items = []
    for r in _manifest_rows(source, "librispeech"):
        start, end = float(r.get("start") or 0.0), r.get("end")
        dur = r.get("duration")
        if dur is None and end is not None:
            dur = float(end) - start
        if dur is None:
            raise ValueError(f"segment {r.get('segment_id')} has neither duration nor end")
        sid = str(r.get("segment_id"))
        meta = {"id": sid, "num_frames": int(round(float(dur) * SAMPLE_RATE)),
                "sample_rate": SAMPLE_RATE, "duration": float(dur),
                "transcript": r.get("text") or "", "speaker": _str(r.get("speaker")),
                "recording": _str(r.get("recording_id")), "session": _str(r.get("session")),
                "language": r.get("language"), "method": r.get("method")}
        if r.get("split") is not None:
            meta["split"] = canonical(r["split"])
        items.append(SourceItem(sid, meta, float(dur), path=str(r["path"]),
                                start=start, end=None if end is None else float(end)))
    return items


def offline_batches(items: Sequence[SourceItem], batch_seconds: float, *, seed: int,
                    shuffle: bool = True, bucket_buffer: int = 50,
                    max_span_seconds: float | None = 10.0,
                    length_growth: float = 1.0) -> list[list[int]]:
    """The trainer's duration batches over the source (item indices).

    The source order is shuffled with the seed first (a LibriSpeech manifest is sorted by
    speaker and chapter; the trainer shuffles too), then fed to the trainer's own batcher
    :func:`corpus_tools.reader.duration_batches` with the trainer's defaults, on the budget
    divided by the condition's ``length_growth`` (as ``ShardBatchStream`` does).
    """
    from corpus_tools.reader import duration_batches

    order = np.arange(len(items))
    if shuffle:
        order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(items))
    lengths = [items[i].seconds for i in order]
    batches = duration_batches(lengths, batch_seconds / length_growth, bucket_buffer=bucket_buffer,
                               max_span_seconds=max_span_seconds, span_policy="split")
    return [[int(order[j]) for j in b] for b in batches]


def _json_safe(v):
    """JSON-ready copy of a meta value (numpy scalars → Python)."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


OUTPUT_FILES = ("shards.parquet", "simulation.parquet", "simulation.json")


def _clear_output(out: Path, overwrite: bool) -> None:
    """Refuse a folder holding shards (unless ``overwrite``), then empty it of our files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    old = sorted(out.glob("shard.*.tar")) if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} shards; pass --overwrite or "
                              "choose another output folder")
    for p in old + [out / n for n in OUTPUT_FILES]:
        p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_shard_set(out: Path, items: Iterable[tuple[str, bytes, dict]], count: int,
                     shard_size: int, audio_format: str, on_shard=None) -> list[dict]:
    """Stream ``count`` sorted ``(key, audio, json)`` items into ``shard.NNNNNN[.partial].tar``
    files of ``shard_size`` with `corpus shard`'s writer, then write ``shards.parquet``."""
    import itertools

    import polars as pl

    from corpus_tools import shards as shardlib
    from corpus_tools.manifests import write_parquet_atomic

    stream = iter(items)
    n_shards = math.ceil(count / max(1, shard_size))
    index = []
    for k in range(n_shards):
        partial = k == n_shards - 1 and count % shard_size != 0
        name = shardlib.shard_name("shard", k, partial)
        if on_shard is not None:
            on_shard(name)
        info = shardlib.write_one_shard(out / name, itertools.islice(stream, shard_size),
                                        presorted=True)
        index.append({**info, "shard_idx": k, "partial": partial, "format": audio_format})
    for _ in stream:  # nothing may be left (the count of utterances never changes)
        raise RuntimeError("more utterances than planned for the shards")
    write_parquet_atomic(pl.DataFrame(
        [{"name": m["name"], "shard_idx": m["shard_idx"], "partial": m["partial"],
          "count": m["count"], "hours": m["seconds"] / 3600.0, "min_duration": m["min_duration"],
          "max_duration": m["max_duration"], "num_frames": m["num_frames"], "bytes": m["bytes"],
          "sha256": m["sha256"], "format": m["format"]} for m in index],
        schema=shardlib.INDEX_SCHEMA), out / shardlib.INDEX_NAME)
    return index


def write_plain_shards(items: Sequence[SourceItem], out_dir: str | Path, *,
                       shard_size: int = 5000, audio_format: str = "wav",
                       overwrite: bool = False) -> list[dict]:
    """The utterances as they are (never degraded), in key order: the validation shards of
    ``corpus simulate --val-output``. Returns the shard index rows."""
    from corpus_tools.audio import encode_audio

    out = Path(out_dir)
    _clear_output(out, overwrite)
    ordered = sorted(items, key=lambda it: it.key)

    def encoded():
        for it in ordered:
            yield it.key, encode_audio(it.load(), SAMPLE_RATE, audio_format), _json_safe(it.meta)

    return _write_shard_set(out, encoded(), len(ordered), shard_size, audio_format)


def simulate_offline(condition: str | Condition, source: str | Path, out_dir: str | Path, *,
                     noise: str | Path | None = None, music: str | Path | None = None,
                     stems: str | Path | None = None, seed: int = 0,
                     batch_seconds: float = 150.0, bucket_buffer: int = 50,
                     max_span_seconds: float | None = 10.0, shuffle: bool = True,
                     shard_size: int = 5000, audio_format: str = "wav",
                     overwrite: bool = False, on_batch=None, split: str = "train",
                     val_output: str | Path | None = None,
                     max_utterance_seconds: float = 30.0) -> dict:
    """``corpus simulate``: degrade ``source`` batch by batch and write shards to ``out_dir``.

    Only the source's ``split`` rows are written (default train: rows whose split is null or
    train; dev | test | all on request — dev and test utterances are never degraded either
    way); ``val_output`` also writes the dev rows, undegraded, as a separate shard set.
    Shards are written with the shard writer of ``corpus shard``
    (:func:`corpus_tools.shards.write_one_shard`: fixed tar metadata, json + wav members,
    atomic rename, ``shard.000000.tar`` … ``.partial.tar`` for the incomplete last one) and
    streamed, so memory holds one batch. Keys are ``{batch:06d}-{segment key}``: reading the
    shards in order gives the simulated batches back, and a batch's utterances are in key
    order; the json ``id`` is the source segment id. Also written: ``shards.parquet`` (the
    shard index of ``corpus shard``), ``simulation.parquet`` (one row per utterance: batch,
    shard and everything in its ``simulation`` json) and ``simulation.json`` (settings and
    totals). ``on_batch(n_utterances, seconds)`` is called after each batch (progress bars).
    Returns the run summary (also in ``simulation.json``).
    """
    import polars as pl

    from corpus_tools import shards as shardlib
    from corpus_tools.audio import encode_audio
    from corpus_tools.manifests import write_parquet_atomic
    from corpus_tools.reader import Utterance

    if audio_format not in ("wav", "flac"):
        raise ValueError(f"audio format must be wav or flac, not {audio_format!r}")
    out = Path(out_dir)
    if val_output is not None:
        if split in ("dev", "all"):
            raise ValueError(f"--val-output writes the dev split next to training shards; "
                             f"with --split {split} the dev rows would be in both")
        if Path(val_output).resolve() == out.resolve():
            raise ValueError("--val-output must be another folder than --output")
        _clear_output(Path(val_output), overwrite)  # refuse an occupied folder before any work
    sim = Simulator(condition, noise=noise, music=music, stems=stems, seed=seed, source=source,
                    batch_seconds=batch_seconds, max_utterance_seconds=max_utterance_seconds)
    every = source_items(source)
    if not every:
        raise ValueError(f"the source {source} holds no utterances")
    for item, key in zip(every, shardlib.safe_keys([str(it.meta.get("id", it.key))
                                                      for it in every])):
        item.key = key
    sim._pool = SpeechPool.from_items(every)  # partners the batch lacks come from the source
    items, left = select(every, split, meta=lambda it: it.meta, seconds=lambda it: it.seconds)
    if not items:
        raise ValueError(f"the source {source} holds no {split} utterances: {left.message()}")
    val_items = select(every, "dev", meta=lambda it: it.meta)[0] if val_output is not None else []
    if val_output is not None and not val_items:
        raise ValueError(f"the source {source} holds no dev utterances for --val-output "
                         "(`corpus holdout` marks some)")
    batches = offline_batches(items, batch_seconds, seed=seed, shuffle=shuffle,
                              bucket_buffer=bucket_buffer, max_span_seconds=max_span_seconds,
                              length_growth=sim.length_growth)
    _clear_output(out, overwrite)

    width = max(6, len(str(len(batches) - 1)))
    rows: list[dict] = []
    totals = {"in": 0.0, "out": 0.0}
    current = {"shard": ""}

    def degraded_items():
        for b, idx in enumerate(batches):
            utts = [Utterance(items[i].key, items[i].load(), dict(items[i].meta)) for i in idx]
            totals["in"] += sum(u.audio.size for u in utts) / SAMPLE_RATE
            for u in sorted(sim(utts, batch_rng(seed, b)), key=lambda u: u.key):
                u.meta["simulation"]["batch"] = b
                meta = _json_safe(u.meta)
                if "key" in meta:  # `corpus shard` json names its key: keep it true
                    meta["key"] = f"{b:0{width}d}-{u.key}"
                totals["out"] += u.audio.size / SAMPLE_RATE
                rows.append({**meta["simulation"], "key": f"{b:0{width}d}-{u.key}",
                             "id": str(meta.get("id", u.key)), "shard": current["shard"],
                             "speaker": meta.get("speaker"), "session": meta.get("session"),
                             "num_frames": int(u.audio.size)})
                yield rows[-1]["key"], encode_audio(u.audio, SAMPLE_RATE, audio_format), meta
            if on_batch is not None:
                on_batch(len(utts), sum(u.audio.size for u in utts) / SAMPLE_RATE)

    index = _write_shard_set(out, degraded_items(), len(items), shard_size, audio_format,
                             on_shard=lambda name: current.update(shard=name))
    table = pl.from_dicts(rows, infer_schema_length=None)
    write_parquet_atomic(table, out / "simulation.parquet")
    val_index = (write_plain_shards(val_items, val_output, shard_size=shard_size,
                                    audio_format=audio_format, overwrite=overwrite)
                 if val_output is not None else [])
    summary = {
        "condition": sim.condition.name, "op": sim.condition.op,
        "source_kind": sim.condition.source, "percent": sim.condition.percent,
        "seed": int(seed), "source": str(source),
        "noise": None if noise is None else str(noise),
        "music": None if music is None else str(music),
        "stems": None if stems is None else str(stems), "batch_seconds": batch_seconds,
        "max_utterance_seconds": max_utterance_seconds, "length_growth": sim.length_growth,
        "bucket_buffer": bucket_buffer, "max_span_seconds": max_span_seconds, "shuffle": shuffle,
        "snr_db": list(sim.settings.snr_db), "batches": len(batches), "utterances": len(rows),
        "modified": int(table["modified"].sum()), "input_seconds": round(totals["in"], 3),
        "output_seconds": round(totals["out"], 3),
        "shards": [{"name": m["name"], "count": m["count"], "sha256": m["sha256"]}
                   for m in index],
        "split": split,
        "left_out": {"utterances": dict(left.counts),
                     "seconds": {k: round(v, 3) for k, v in left.seconds.items()},
                     "message": left.message() if left else None},
    }
    if val_output is not None:
        summary["val_output"] = {"path": str(val_output), "utterances": len(val_items),
                                 "shards": [{"name": m["name"], "count": m["count"],
                                             "sha256": m["sha256"]} for m in val_index]}
    tmp = out / ".simulation.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "simulation.json")
    return summary


__all__ = [
    "Condition", "Settings", "Simulator", "ClipPool", "SpeechPool", "parse_condition",
    "valid_condition_names", "load_settings", "count_selected", "active_power", "measure_snr",
    "fit_length", "place", "mix_at_snr", "batch_rng", "is_validation", "frame_powers",
    "read_shard_audio", "SourceItem", "source_items", "offline_batches",
    "simulate_offline", "summarize", "write_plain_shards",
]
