"""Where interferers and speech partners come from: clip pools and the speech pool.

:class:`ClipPool` holds noise, music or stem clips (a manifest or a ``corpus stem`` folder)
and draws one fitted to an utterance's length; :class:`SpeechPool` holds the training
utterances a speech partner can come from when the batch has none that fits the rule. Both
read audio only when a clip or partner is picked.
"""

from __future__ import annotations

import glob
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import polars as pl

from corpus_tools.audio import SAMPLE_RATE, load_audio
from corpus_tools.data.members import decode_member, read_member
from corpus_tools.data.tar_index import read_shard_records
from corpus_tools.importers import IMPORTERS
from corpus_tools.manifests import ManifestError, read_manifest, resolve_segments_source
from corpus_tools.simulate.conditions import Settings
from corpus_tools.simulate.signal import active_power, fit_length
from corpus_tools.splits import is_held_out

if TYPE_CHECKING:
    from corpus_tools.simulate.offline import SourceItem

_MAX_DRAWS = 10  # re-draws for an unusable interferer (unreadable clip or silent crop)


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


def manifest_rows(path: str | Path, corpus: str | None = None) -> list[dict]:
    """Rows of a manifest (parquet/csv, or a work dir holding one segments manifest).

    A folder that holds no manifest is imported on the fly with ``corpus import``'s
    importer for ``corpus`` (librispeech | musan | fma), so ``--source LibriSpeech/`` works;
    importing once with ``corpus import`` and passing the manifest is faster for big sets.
    """
    try:
        manifest = resolve_segments_source(path, None)
    except ManifestError:
        if corpus is None or not Path(path).is_dir():
            raise
        return IMPORTERS[corpus](path).to_dicts()
    df = read_manifest(manifest, None, "clip")
    if "path" not in df.columns:
        raise ValueError(f"manifest {path} has no 'path' column")
    return df.to_dicts()


def clip_id_of(row: dict, i: int) -> str:
    """A clip's id: the manifest's id column, else its file name and row number."""
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
        rows = manifest_rows(path, {"noise": "musan", "music": "fma"}.get(kind))
        entries = [dict(id=clip_id_of(r, i), path=str(r["path"]), start=r.get("start"),
                        end=r.get("end")) for i, r in enumerate(rows)]
        return cls(entries, kind, cache_size)

    @classmethod
    def from_stems(cls, stem_dir: str | Path, which: str, cache_size: int = 32) -> "ClipPool":
        """Stems written by ``corpus stem``; ``which`` = instr | vocal (usable vocals only)."""
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


def read_shard_audio(loc: tuple[str, int, int]) -> np.ndarray:
    """The samples of the shard member at ``loc`` = (shard path, offset, size)."""
    return decode_member(read_member(*loc))


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
        shards = shard_paths(source)
        if shards:
            entries = []
            for shard in shards:
                for rec in read_shard_records(shard):
                    meta = rec.meta
                    if is_held_out(meta) or rec.offset < 0:
                        continue
                    entries.append(dict(id=str(meta.get("id", rec.key)), key=rec.key,
                                        speaker=str_or_none(meta.get("speaker")),
                                        session=session_of(meta),
                                        text=meta.get("transcript", ""),
                                        loc=(shard, rec.offset, rec.size)))
            return cls(entries)
        rows = [r for r in manifest_rows(source, "librispeech") if not is_held_out(r)]
        return cls([dict(id=str(r.get("segment_id")), key=str(r.get("segment_id")),
                         speaker=str_or_none(r.get("speaker")),
                         session=session_of({"session": r.get("session"),
                                             "recording": r.get("recording_id")}),
                         text=r.get("text") or "", path=str(r["path"]), start=r.get("start"),
                         end=r.get("end")) for r in rows])

    @classmethod
    def from_items(cls, items: Sequence["SourceItem"]) -> "SpeechPool":
        """The pool of an already listed source (offline mode: no second pass over it)."""
        entries = []
        for it in items:
            if is_held_out(it.meta):
                continue
            e = dict(id=str(it.meta.get("id", it.key)), key=it.key,
                     speaker=str_or_none(it.meta.get("speaker")), session=session_of(it.meta),
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
        return load_audio(e["path"], e["start"], e["end"], SAMPLE_RATE)

    def pick(self, rule: str, meta: dict, own_ids: set[str],
             rng: np.random.Generator) -> int | None:
        """Index of a random pool utterance that fits ``rule`` for ``meta``, or None."""
        if rule == "same-session":
            key = session_of(meta)
            cands = [i for i in self.by_session.get(key, ()) if self.entries[i]["id"] not in own_ids]
            return cands[int(rng.integers(0, len(cands)))] if cands else None
        speaker = str_or_none(meta.get("speaker"))
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


def str_or_none(v) -> str | None:
    return None if v is None else str(v)


def session_of(meta: dict) -> str | None:
    """LibriSpeech chapter; when a meta has no session, its recording stands in for it."""
    session = meta.get("session")
    return str_or_none(session if session is not None else meta.get("recording"))


def shard_paths(source) -> list[str]:
    """Tar shards named by ``source`` (dir of tars, glob, a .tar, or a list); [] otherwise."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    p = Path(source)
    if p.is_dir():  # as corpus_tools.data.tar_index.list_shards: top level first, else recursive
        tars = sorted(str(t) for t in p.glob("*.tar") if not t.name.startswith("."))
        return tars or sorted(str(t) for t in p.rglob("*.tar") if not t.name.startswith("."))
    if p.suffix == ".tar" and p.exists():
        return [str(p)]
    if any(ch in str(source) for ch in "*?["):
        return sorted(glob.glob(str(source)))
    return []
