"""The compact shard plan (Arrow columns and index arrays, items made on demand) is the plan
the earlier planner made with a dict per item: the same shards, items, json and fingerprint,
for every option. No audio: the plan decodes nothing."""

from __future__ import annotations

import pickle
import random
import tarfile

import numpy as np
import polars as pl
import pytest

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.manifests import SEGMENTS_SCHEMA
from corpus_tools.shards import plan as pl_mod
from corpus_tools.shards.plan import ShardSpec, plan_fingerprint, plan_shards, safe_keys, shard_name
from corpus_tools.shards.state import distribution_frame
from corpus_tools.splits import select_segments


def _old_plan(segments: pl.DataFrame, *, samples_per_shard: int = 5000, max_shard_bytes: int | None = None,
              strategy: str = "length_sorted", seed: int = 0, prefix: str = "shard",
              split: str = "train") -> list[ShardSpec]:
    """The planner as it was: every row a dict, every item a dict with its json."""
    df, _ = select_segments(pl_mod.prepare_segments(segments), split)
    extra = [c for c in df.columns if c not in SEGMENTS_SCHEMA]
    rows = df.to_dicts()
    keys = safe_keys([r["segment_id"] for r in rows])
    items = []
    for r, key in zip(rows, keys):
        duration = float(r["duration"])
        n = int(round(duration * SAMPLE_RATE))
        if n <= 0:
            continue
        items.append({"key": key, "path": r["path"], "start": float(r["start"]),
                      "num_frames": n, "meta": pl_mod._sample_json(r, key, n, duration, extra)})
    if strategy == "length_sorted":
        items.sort(key=lambda it: (it["num_frames"], it["key"]))
    else:
        perm = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in perm]
    groups, cur = [], []
    end_bytes = tarfile.RECORDSIZE
    cur_bytes = end_bytes
    for it in items:
        size = pl_mod._estimate_bytes(it["meta"], it["num_frames"]) if max_shard_bytes else 0
        if cur and (len(cur) >= samples_per_shard or (max_shard_bytes and cur_bytes + size > max_shard_bytes)):
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


@pytest.fixture(scope="module")
def manifest() -> pl.DataFrame:
    """700 segments of 9 recordings: ids with dots and spaces (keys that clash), equal
    lengths (ties broken by key), an empty segment, splits, a missing duration, extra columns."""
    rng = random.Random(3)
    rows = []
    for i in range(700):
        rid = f"rec.{i % 9}" if i % 9 else "rec 0"
        start = round(rng.uniform(0, 3000), 3)
        duration = rng.choice([1.5, 2.0, round(rng.uniform(0.5, 25.0), 3)])
        rows.append({"segment_id": f"{rid}_{i:04d}" if i % 50 else f"{rid}.{i:04d}",
                     "recording_id": rid, "path": f"/a/{rid}.mp3", "start": start, "end": start + duration,
                     "duration": None if i % 97 == 5 else duration, "text": rng.choice(["Hallo, daar!", "", "één"]),
                     "speaker": rng.choice([None, f"{rid}:SPEAKER_00"]), "method": "wx-diar-3s",
                     "language": "nl", "session": rid, "split": rng.choice([None, "train", "dev", "test"]),
                     "gender": rng.choice(["f", "m", None]), "score": rng.choice([0.5, float("nan"), None])})
    rows[10]["segment_id"] = rows[11]["segment_id"].replace("_", ".")  # two ids, one key: a `_1` suffix
    rows[12].update(end=rows[12]["start"], duration=0.0)  # empty: left out
    return pl.DataFrame(rows, schema_overrides={**SEGMENTS_SCHEMA, "score": pl.Float64}).sample(
        fraction=1.0, shuffle=True, seed=1)  # input order never matters


@pytest.mark.parametrize("opts", [
    {"samples_per_shard": 64},
    {"samples_per_shard": 700},
    {"samples_per_shard": 1000, "split": "all"},
    {"samples_per_shard": 50, "strategy": "random", "seed": 4},
    {"samples_per_shard": 80, "max_shard_bytes": 2_500_000},
    {"samples_per_shard": 40, "split": "dev", "prefix": "dev"},
])
def test_compact_plan_is_the_dict_plan(manifest, opts):
    old = _old_plan(manifest, **opts)
    new = plan_shards(manifest, **opts)
    assert [(s.index, s.name, s.partial, s.count) for s in new] == [(s.index, s.name, s.partial, len(s.items))
                                                                    for s in old]
    assert [s.seconds for s in new] == [s.seconds for s in old]  # before the items are made
    for fmt in ("wav", "flac"):
        assert plan_fingerprint(new, fmt) == plan_fingerprint(old, fmt)
    assert pl_mod.legacy_fingerprint(new, "wav") == pl_mod.legacy_fingerprint(old, "wav")
    assert distribution_frame(new).equals(distribution_frame(old))
    assert all(s._items is None for s in new)  # none of that kept the items
    sent = pickle.loads(pickle.dumps(new[0]))  # as a worker process gets it: its own rows only
    assert sent._rows.table.height == len(old[0].items) and sent == old[0]
    assert new == old  # items, json and all


def test_keys_are_the_old_keys(manifest):
    ids = manifest["segment_id"]
    by_id = ids.arg_sort().to_numpy()
    keys = pl_mod._key_series(ids, by_id)
    assert keys.gather(by_id).to_list() == safe_keys(ids.gather(by_id).to_list())
    clash = pl.Series(["c", "a b", "a.b", ""])  # → the exact loop, suffixes in id order
    got = pl_mod._key_series(clash, clash.arg_sort().to_numpy()).to_list()
    assert got == ["c", "a_b", "a_b_1", "_"]  # "a b" sorts before "a.b"


def test_nan_duration_fails_as_before():
    df = pl.DataFrame([{"segment_id": "a", "recording_id": "r", "path": "/p", "start": 0.0, "end": 1.0,
                        "duration": float("nan")}])
    with pytest.raises(ValueError):
        plan_shards(df)
