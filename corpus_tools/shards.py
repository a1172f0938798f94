"""Write segments manifests as WebDataset tar shards (nanow2v2's layout).

Layout of an output directory::

    shard.000000.tar ... shard.000041.partial.tar   the shards
    shards.parquet                                  index: one row per shard (written last)
    _shard_distribution.csv                         which key went to which shard (nanow2v2)
    .state/plan.json, .state/shard.NNNNNN.json      resume markers (fingerprint + checksums)

Only the shards have ``.tar`` in their names: loaders find shards by a recursive glob
(nanow2v2 uses ``*.tar``, ``*.tar*`` and ``*.*.tar*``, hidden files included), so neither a
marker (``.state/shard.000000.json``) nor the temp file of a shard being written
(``.shard.000000.tmp``) may match. Folders written by earlier versions, whose markers were
``.state/{shard}.tar.json``, are migrated when they are resumed.

Each utterance is two tar members sharing a key: ``{key}.json`` then ``{key}.wav`` (or
``.flac``), 16 kHz mono 16-bit PCM. The json carries both our field names and nanow2v2's
(``speaker``/``speaker_id``, ``recording``/``recording_id``, ``language``/``language_tag``,
``id``/``sample_id``). The text is kept twice: ``transcript`` is the manifest's text as
given, ``transcription`` (the key nanow2v2 trains on) is that text normalised to the letter
vocabulary by :func:`corpus_tools.text.normalize_text` for the row's language (lower case
a–z, apostrophe, single spaces). Who reads what: wav shards are read by our reader
(:mod:`corpus_tools.reader`), nanow2v2 and the ``webdataset`` library; flac shards by our
reader and ``webdataset`` only, because nanow2v2 decodes ``.wav`` members and nothing else.

Guarantees:

* **Deterministic bytes** — the plan (which segment goes to which shard) depends only on
  the manifest rows, the options and the seed; members are sorted by key; tar metadata is
  fixed (mtime 2023-01-01, uid/gid 0, ``research``/``data``, mode 0444); json has sorted
  keys; audio is 16-bit PCM from ``corpus_tools.audio.encode_audio``.
* **Atomic, resumable** — a shard is written as ``.{stem}.tmp`` (``.shard.000001.tmp``),
  fsynced and renamed, then its marker is written. A rerun trusts a shard only when its
  marker matches the plan's fingerprint and the file size; anything else is rewritten
  (identical bytes). A crash never leaves a truncated tar under a final name.
* **Exact hours** — each segment holds ``round(duration * 16000)`` frames (the decoded
  range trimmed or zero-padded to that), and the index's hours are the manifest's.
* **Training data only, unless asked** — ``split="train"`` (the default) writes the rows
  whose ``split`` is null or train; dev and test rows need ``split="dev"|"test"|"all"``
  (:func:`corpus_tools.splits.select_segments`). A row's split is a top-level json key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import polars as pl

from corpus_tools.manifests import SEGMENTS_SCHEMA, ManifestError, validate, write_parquet_atomic
from corpus_tools.splits import canonical, select_segments
from corpus_tools.text import normalize_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
STRATEGIES = ("length_sorted", "random")
FORMATS = ("wav", "flac")
TAR_MTIME = 1672527600  # 2023-01-01, as nanow2v2
TAR_UNAME, TAR_GNAME = "research", "data"
TAR_MODE = 0o444
STATE_DIR = ".state"
INDEX_NAME = "shards.parquet"
DISTRIBUTION_NAME = "_shard_distribution.csv"
_BLOCK = 512
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")  # WebDataset keys end at the first dot

INDEX_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String,  # file name of the shard
    "shard_idx": pl.Int64,
    "partial": pl.Boolean,  # the incomplete last shard (.partial.tar)
    "count": pl.Int64,  # utterances
    "hours": pl.Float64,
    "min_duration": pl.Float64,  # seconds
    "max_duration": pl.Float64,
    "num_frames": pl.Int64,  # total 16 kHz frames
    "bytes": pl.Int64,
    "sha256": pl.String,
    "format": pl.String,  # wav | flac
}


# -- planning -----------------------------------------------------------------------------


@dataclass
class ShardSpec:
    """One planned shard: its name and the utterances it holds (sorted by key)."""

    index: int
    name: str
    partial: bool
    items: list[dict] = field(default_factory=list)  # {key, path, start, num_frames, meta}

    @property
    def seconds(self) -> float:
        return float(sum(it["meta"]["duration"] for it in self.items))


def shard_name(prefix: str, index: int, partial: bool) -> str:
    return f"{prefix}.{index:06d}.partial.tar" if partial else f"{prefix}.{index:06d}.tar"


def shard_stem(name: str) -> str:
    """A shard's name without ``.tar`` (``shard.000001.partial``), for the files that belong
    to a shard but must not look like one to a ``*.tar*`` glob."""
    return name[:-4] if name.endswith(".tar") else name.replace(".tar", "_tar")


def temp_path(path: str | os.PathLike, tag: str = "") -> Path:
    """Where a shard is written before its rename: ``.shard.000001.tmp`` next to it."""
    path = Path(path)
    return path.with_name(f".{shard_stem(path.name)}{tag}.tmp")


def marker_path(out_dir: str | os.PathLike, name: str) -> Path:
    """The resume marker of shard ``name``: ``.state/shard.000001.json``."""
    return Path(out_dir) / STATE_DIR / f"{shard_stem(name)}.json"


def _old_marker_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / STATE_DIR / f"{name}.json"  # earlier versions: .state/shard.000001.tar.json


def migrate_state(out_dir: str | os.PathLike) -> int:
    """Bring a folder written by an earlier version to today's names: its markers
    ``.state/{shard}.tar.json`` become ``.state/{stem}.json`` and its temp files
    ``.{shard}.tmp`` (a killed writer's) go, since nanow2v2's ``*.tar*`` globs take both for
    shards. Returns the number of markers renamed."""
    out = Path(out_dir)
    renamed = 0
    state = out / STATE_DIR
    if state.is_dir():
        for old in sorted(state.glob("*.tar.json")):
            new = marker_path(out, old.name[: -len(".json")])
            try:
                if new.exists():
                    old.unlink()
                else:
                    os.replace(old, new)
                    renamed += 1
            except FileNotFoundError:  # another part of the same run migrated it first
                pass
        for tmp in state.glob(".*.tar.json.*.tmp"):
            tmp.unlink(missing_ok=True)
    if out.is_dir():
        for tmp in out.glob(".*.tar*.tmp"):
            tmp.unlink(missing_ok=True)
    if renamed:
        log.info("%s: renamed %d resume markers written by an earlier version", out, renamed)
    return renamed


def safe_keys(segment_ids: list[str]) -> list[str]:
    """Tar keys for segment ids: dots and odd characters become ``_``, clashes get ``_N``."""
    seen: dict[str, int] = {}
    out = []
    for sid in segment_ids:
        k = _KEY_UNSAFE.sub("_", sid) or "_"
        if k in seen:
            seen[k] += 1
            k2 = f"{k}_{seen[k]}"
            while k2 in seen:
                seen[k] += 1
                k2 = f"{k}_{seen[k]}"
            k = k2
        seen.setdefault(k, 0)
        out.append(k)
    return out


def _clean(v):
    """A JSON-safe scalar (NaN → None), or None for nested values."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    return None


def letter_transcript(text: str, language: str | None) -> str:
    """The json's ``transcription``: ``text`` in the letter vocabulary (a–z, ', space)."""
    return normalize_text(text, language or "en")


def _sample_json(row: dict, key: str, num_frames: int, duration: float, extra: list[str]) -> dict:
    text = row.get("text") or ""
    meta = {
        "id": row["segment_id"],
        "sample_id": row["segment_id"],
        "key": key,
        "num_frames": num_frames,
        "sample_rate": SAMPLE_RATE,
        "duration": duration,
        "transcript": text,  # as the manifest has it
        "transcription": letter_transcript(text, row.get("language")),
        "speaker": row.get("speaker"),
        "speaker_id": row.get("speaker"),
        "recording": row.get("recording_id"),
        "recording_id": row.get("recording_id"),
        "session": row.get("session"),
        "language": row.get("language"),
        "language_tag": row.get("language"),
        "method": row.get("method"),
        "gender": _clean(row.get("gender")),
        "start": row.get("start"),
        "end": row.get("end"),
    }
    if row.get("split") is not None:  # top level, where the simulation and readers look
        meta["split"] = canonical(row["split"])
    ext = {c: _clean(row.get(c)) for c in extra if c not in meta and c != "split"}
    if ext:
        meta["extra"] = ext
    return meta


def _tar_member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _estimate_bytes(meta: dict, num_frames: int) -> int:
    """Tar bytes of one utterance as 16-bit PCM WAV (exact for wav; flac is smaller)."""
    jlen = len(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    # names over 100 bytes get a PAX extended header (one header block + one data block)
    pax = 4 * _BLOCK if len(meta["key"]) + len(".flac") >= 100 else 0
    return _tar_member_bytes(jlen) + _tar_member_bytes(44 + 2 * num_frames) + pax


def prepare_segments(segments: pl.DataFrame) -> pl.DataFrame:
    """Validate a segments manifest and order it by segment id (input order never matters)."""
    df = validate(segments, SEGMENTS_SCHEMA, "segments")
    if df.height and df["segment_id"].null_count():
        raise ManifestError("segments manifest has rows without segment_id")
    dup = df.filter(pl.col("segment_id").is_duplicated())["segment_id"].unique().sort()
    if dup.len():
        raise ManifestError(f"duplicate segment_id in manifest: {', '.join(dup.head(5))}")
    missing = df.filter(pl.col("path").is_null() | pl.col("start").is_null()
                        | (pl.col("end").is_null() & pl.col("duration").is_null()))
    if missing.height:
        raise ManifestError(f"{missing.height} segments lack path/start/end, e.g. "
                            f"{missing['segment_id'][0]}")
    return (df.with_columns(pl.coalesce(pl.col("duration"), pl.col("end") - pl.col("start"))
                            .alias("duration"))
            .sort("segment_id"))


def plan_shards(segments: pl.DataFrame, *, samples_per_shard: int = 5000,
                max_shard_bytes: int | None = None, strategy: str = "length_sorted",
                seed: int = 0, prefix: str = "shard", split: str = "train") -> list[ShardSpec]:
    """Decide which segment goes to which shard (deterministic; nothing is decoded).

    Only the rows of ``split`` (train | dev | test | all; null counts as train) are planned.

    ``length_sorted`` sorts by length (ties by key) and cuts consecutive blocks, so each
    shard is a length bin (little padding when batching, as nanow2v2); ``random``
    shuffles with ``seed``. A shard closes at ``samples_per_shard`` utterances or before it
    would pass ``max_shard_bytes`` (estimated on 16-bit PCM, so flac shards come out
    smaller). The last shard is ``.partial.tar`` unless it is exactly full.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be at least 1")
    df, _ = select_segments(prepare_segments(segments), split)
    extra = [c for c in df.columns if c not in SEGMENTS_SCHEMA]
    rows = df.to_dicts()
    keys = safe_keys([r["segment_id"] for r in rows])
    items = []
    for r, key in zip(rows, keys):
        duration = float(r["duration"])
        n = int(round(duration * SAMPLE_RATE))
        if n <= 0:
            log.warning("skipping empty segment %s", r["segment_id"])
            continue
        items.append({"key": key, "path": r["path"], "start": float(r["start"]),
                      "num_frames": n, "meta": _sample_json(r, key, n, duration, extra)})
    if strategy == "length_sorted":
        items.sort(key=lambda it: (it["num_frames"], it["key"]))
    else:
        perm = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in perm]

    groups: list[list[dict]] = []
    cur: list[dict] = []
    end_bytes = tarfile.RECORDSIZE  # end-of-archive blocks + padding to a whole record, at most
    cur_bytes = end_bytes
    for it in items:
        size = _estimate_bytes(it["meta"], it["num_frames"]) if max_shard_bytes else 0
        if cur and (len(cur) >= samples_per_shard
                    or (max_shard_bytes and cur_bytes + size > max_shard_bytes)):
            groups.append(cur)
            cur, cur_bytes = [], end_bytes
        cur.append(it)
        cur_bytes += size
    if cur:
        groups.append(cur)
    specs = []
    for i, g in enumerate(groups):
        partial = i == len(groups) - 1 and len(g) < samples_per_shard
        g.sort(key=lambda it: it["key"])
        specs.append(ShardSpec(i, shard_name(prefix, i, partial), partial, g))
    return specs


def plan_fingerprint(specs: list[ShardSpec], fmt: str) -> str:
    """A hash of everything that determines the shards' bytes."""
    h = hashlib.sha256(f"v1|{fmt}|{SAMPLE_RATE}\n".encode())
    for s in specs:
        h.update(f"#{s.name}\n".encode())
        for it in s.items:
            h.update(f"{it['path']}|{it['start']!r}|{it['num_frames']}|".encode())
            h.update(json.dumps(it["meta"], sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


# -- writing one shard --------------------------------------------------------------------


class _HashingFile:
    """A write-only file that keeps a running sha256 and byte count."""

    def __init__(self, fh):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.fh.flush()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = TAR_MTIME
    ti.mode = TAR_MODE
    ti.uid = ti.gid = 0
    ti.uname, ti.gname = TAR_UNAME, TAR_GNAME
    ti.type = tarfile.REGTYPE
    return ti


def _audio_ext(data: bytes) -> str:
    if data[:4] == b"RIFF":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    raise ValueError("audio bytes are neither WAV (RIFF) nor FLAC")


def json_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def write_one_shard(path: str | os.PathLike, items: Iterable[tuple[str, bytes, dict]], *,
                    presorted: bool = False) -> dict:
    """Write one tar shard atomically from ``(key, audio_bytes, json_dict)`` items.

    Members are ``{key}.json`` then ``{key}.wav``/``.flac`` (from the audio's magic bytes),
    in key order: ``presorted=False`` collects and sorts the items first; ``presorted=True``
    streams them (constant memory) and raises if they are out of order. Keys must not
    contain dots (WebDataset splits the key at the first dot). The shard is written to
    ``temp_path(path)`` (``.shard.000001.tmp``: no ``.tar`` in it, so no shard glob finds a
    half-written file), fsynced and renamed. Returns ``{name, count, bytes, sha256,
    num_frames, min_duration, max_duration, seconds}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not presorted:
        items = sorted(items, key=lambda t: t[0])
    tmp = temp_path(path)
    count = frames = 0
    seconds = 0.0
    durs: list[float] = []
    last = None
    try:
        with open(tmp, "wb") as raw:
            out = _HashingFile(raw)
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for key, audio, meta in items:
                    if "." in key.rsplit("/", 1)[-1]:
                        raise ValueError(f"shard key {key!r} contains a dot")
                    if last is not None and key <= last:
                        raise ValueError(f"shard items not sorted/unique by key at {key!r}")
                    last = key
                    jb = json_bytes(meta)
                    tf.addfile(_tarinfo(f"{key}.json", len(jb)), io.BytesIO(jb))
                    tf.addfile(_tarinfo(f"{key}.{_audio_ext(audio)}", len(audio)), io.BytesIO(audio))
                    count += 1
                    n = int(meta.get("num_frames") or 0)
                    frames += n
                    d = float(meta.get("duration", n / SAMPLE_RATE))
                    seconds += d
                    durs.append(d)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": path.name, "count": count, "bytes": out.size, "sha256": out.sha.hexdigest(),
            "num_frames": frames, "seconds": seconds,
            "min_duration": min(durs) if durs else 0.0, "max_duration": max(durs) if durs else 0.0}


def cut_segment(path: str, start: float, num_frames: int) -> np.ndarray:
    """``num_frames`` samples of ``path`` from ``start`` at 16 kHz (zero-padded at the end)."""
    from corpus_tools.audio import load_audio

    x = load_audio(path, start, start + num_frames / SAMPLE_RATE, SAMPLE_RATE)
    if len(x) >= num_frames:
        return x[:num_frames]
    return np.concatenate([x, np.zeros(num_frames - len(x), dtype=np.float32)])


def _spec_items(spec: ShardSpec, fmt: str) -> Iterator[tuple[str, bytes, dict]]:
    from corpus_tools.audio import encode_audio

    for it in spec.items:  # key order; segment ids usually keep a recording together
        x = cut_segment(it["path"], it["start"], it["num_frames"])
        yield it["key"], encode_audio(x, SAMPLE_RATE, fmt), it["meta"]


def _write_spec(out_dir: str, spec: ShardSpec, fmt: str, fingerprint: str) -> dict:
    """Write one planned shard and its marker (runs in a worker process)."""
    out = Path(out_dir)
    stats = write_one_shard(out / spec.name, _spec_items(spec, fmt), presorted=True)
    stats.update(shard_idx=spec.index, partial=spec.partial, format=fmt, fingerprint=fingerprint)
    _write_json_atomic(marker_path(out, spec.name), stats)
    return stats


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # per-process temp name: parts running at once (SLURM array, Ray tasks) all write plan.json
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_marker(out: Path, name: str) -> dict | None:
    for path in (marker_path(out, name), _old_marker_path(out, name)):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _is_done(out: Path, spec: ShardSpec, fingerprint: str) -> dict | None:
    """The marker of a finished shard, when it can be trusted."""
    m = _read_marker(out, spec.name)
    p = out / spec.name
    if (m is None or m.get("fingerprint") != fingerprint or not p.is_file()
            or p.stat().st_size != m.get("bytes")):
        return None
    return m


# -- the whole directory ------------------------------------------------------------------


def _index_frame(markers: list[dict]) -> pl.DataFrame:
    rows = [{"name": m["name"], "shard_idx": m["shard_idx"], "partial": m["partial"],
             "count": m["count"], "hours": m["seconds"] / 3600.0,
             "min_duration": m["min_duration"], "max_duration": m["max_duration"],
             "num_frames": m["num_frames"], "bytes": m["bytes"], "sha256": m["sha256"],
             "format": m["format"]} for m in sorted(markers, key=lambda m: m["shard_idx"])]
    return pl.DataFrame(rows, schema=INDEX_SCHEMA)


def _distribution_frame(specs: list[ShardSpec]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"key": it["key"], "segment_id": it["meta"]["id"], "shard_idx": s.index,
          "partial_shard": s.partial, "shard": s.name, "num_frames": it["num_frames"]}
         for s in specs for it in s.items],
        schema={"key": pl.String, "segment_id": pl.String, "shard_idx": pl.Int64,
                "partial_shard": pl.Boolean, "shard": pl.String, "num_frames": pl.Int64})


def _write_csv_atomic(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.write_csv(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _legacy_fingerprint(specs: list[ShardSpec], fmt: str) -> str:
    """The fingerprint earlier versions gave this plan: their json held the manifest's text
    in ``transcription`` too."""
    def old(meta: dict) -> dict:
        return {**meta, "transcription": meta.get("transcript", "")}

    return plan_fingerprint([ShardSpec(s.index, s.name, s.partial,
                                       [{**it, "meta": old(it["meta"])} for it in s.items])
                             for s in specs], fmt)


def open_out_dir(out: Path, specs: list[ShardSpec], fmt: str, prefix: str,
                 overwrite: bool) -> str:
    """Make ``out`` ready for the plan ``specs`` and return its fingerprint: create it,
    migrate an earlier version's names, and refuse shards of another plan (unless
    ``overwrite``). A folder an earlier version wrote from the same rows and options is
    resumed; its shards whose json changed since (the ``transcription`` key) are rewritten,
    the others are kept."""
    fingerprint = plan_fingerprint(specs, fmt)
    out.mkdir(parents=True, exist_ok=True)
    migrate_state(out)
    _check_out_dir(out, fingerprint, prefix, overwrite,
                   also_same=lambda: _legacy_fingerprint(specs, fmt))
    return fingerprint


def _check_out_dir(out: Path, fingerprint: str, prefix: str, overwrite: bool,
                   also_same=None) -> None:
    """Refuse to mix shards of different plans in one directory (unless ``overwrite``).

    ``also_same()``: another fingerprint that counts as this plan (an earlier version's)."""
    plan_file = out / STATE_DIR / "plan.json"
    # list the tars before reading the plan: a concurrent part writes its plan before its
    # first shard, so a shard seen here always comes with a readable plan
    existing = sorted(p.name for p in out.glob(f"{prefix}.*.tar"))
    try:
        old = json.loads(plan_file.read_text()).get("fingerprint")
    except (OSError, ValueError):
        old = None
    if old == fingerprint:
        return
    if old is not None and also_same is not None and old == also_same():
        log.info("%s was written by an earlier version: resuming it", out)
        return
    if (old is not None or existing) and not overwrite:
        raise FileExistsError(
            f"{out} already holds shards written from a different manifest or options "
            f"({len(existing)} tar files); pass overwrite=True (--overwrite) or choose a new "
            f"output directory")
    if overwrite:
        for name in existing:
            (out / name).unlink()
        if (out / STATE_DIR).is_dir():
            for p in (out / STATE_DIR).glob("*.json"):
                p.unlink()
        (out / INDEX_NAME).unlink(missing_ok=True)


def write_shards(segments_df: pl.DataFrame, out_dir: str | os.PathLike, *,
                 samples_per_shard: int = 5000, max_shard_bytes: int | None = None,
                 strategy: str = "length_sorted", fmt: str = "wav", seed: int = 0,
                 prefix: str = "shard", workers: int = 1, progress: bool = True,
                 num_shards: int = 1, shard_index: int = 0,
                 overwrite: bool = False, split: str = "train") -> pl.DataFrame:
    """Cut every segment of ``split`` from its recording and write tar shards plus an index.

    ``split``: train (default: rows whose split is null or train), dev, test or all.

    Resumes: shards whose marker matches the plan are kept, the rest are (re)written.
    ``num_shards``/``shard_index`` write only shards with ``idx % num_shards ==
    shard_index`` (several machines or Ray tasks sharing one output directory); the index
    ``shards.parquet`` is written by whichever call finds every shard finished. Returns the
    index of the finished shards (all of them once the directory is complete).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    out = Path(out_dir)
    specs = plan_shards(segments_df, samples_per_shard=samples_per_shard,
                        max_shard_bytes=max_shard_bytes, strategy=strategy, seed=seed,
                        prefix=prefix, split=split)
    fingerprint = open_out_dir(out, specs, fmt, prefix, overwrite)
    _write_json_atomic(out / STATE_DIR / "plan.json",
                       {"fingerprint": fingerprint, "format": fmt, "strategy": strategy,
                        "seed": seed, "samples_per_shard": samples_per_shard,
                        "max_shard_bytes": max_shard_bytes, "prefix": prefix,
                        "shards": [s.name for s in specs]})
    _write_csv_atomic(_distribution_frame(specs), out / DISTRIBUTION_NAME)

    mine = [s for s in specs if s.index % num_shards == shard_index]
    todo = []
    for s in mine:
        temp_path(out / s.name).unlink(missing_ok=True)  # left by a crash of this subset
        if _is_done(out, s, fingerprint) is None:
            todo.append(s)
    if len(todo) < len(mine):
        log.info("resuming: %d of %d shards already written", len(mine) - len(todo), len(mine))

    bar = _progress(progress, sum(s.seconds for s in todo), len(todo))
    try:
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                _write_spec(str(out), s, fmt, fingerprint)
                bar.update(s.seconds)
        else:
            import multiprocessing as mp

            # spawn: polars and torch are not fork-safe
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
                futs = [ex.submit(_write_spec, str(out), s, fmt, fingerprint) for s in todo]
                for s, f in zip(todo, futs):
                    f.result()
                    bar.update(s.seconds)
    finally:
        bar.close()

    markers = [m for s in specs if (m := _is_done(out, s, fingerprint)) is not None]
    index = _index_frame(markers)
    if len(markers) == len(specs):
        write_parquet_atomic(index, out / INDEX_NAME)
    return index


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total_seconds: float, n: int):
    if not enabled or n == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total_seconds, unit="s audio", desc=f"writing {n} shards",
                unit_scale=True, dynamic_ncols=True)


def read_index(shard_dir: str | os.PathLike) -> pl.DataFrame:
    """The ``shards.parquet`` index of a complete shard directory."""
    p = Path(shard_dir) / INDEX_NAME
    if not p.is_file():
        raise ManifestError(f"no shard index at {p}: the shard directory is incomplete "
                            f"(rerun `corpus shard` to finish it)")
    return pl.read_parquet(p)


def verify_shards(shard_dir: str | os.PathLike) -> list[str]:
    """Check every indexed shard's size and sha256; return the problems found."""
    d = Path(shard_dir)
    problems = []
    for row in read_index(d).iter_rows(named=True):
        p = d / row["name"]
        if not p.is_file():
            problems.append(f"{row['name']}: missing")
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != row["sha256"]:
            problems.append(f"{row['name']}: sha256 mismatch")
    return problems


__all__ = [
    "INDEX_SCHEMA", "ShardSpec", "letter_transcript", "marker_path", "migrate_state",
    "plan_shards", "read_index", "safe_keys", "temp_path", "verify_shards", "write_one_shard",
    "write_shards",
]
