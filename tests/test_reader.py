"""corpus_tools.data: shard streaming, DDP/worker splitting, duration batching, resume."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus_tools.audio import encode_audio
from corpus_tools.data.batch import Batch, Utterance, collate, padding_fraction
from corpus_tools.data.batching import DurationBatcher, duration_batches
from corpus_tools.data.stream import ShardBatchStream, make_loader
from corpus_tools.data.tar_index import list_shards
from corpus_tools.shards import write_one_shard

SR = 16000


def signal_for(i: int, n: int) -> np.ndarray:
    """A recognisable signal: constant level i/1000 (PCM16 keeps it to within 1/32768)."""
    return np.full(n, (i % 900 + 1) / 1000, dtype=np.float32)


def build_shards(root: Path, lengths_s: list[float], per_shard: int, fmt: str = "wav",
                 sort: bool = True) -> list[str]:
    """Shards of utterances with the given lengths (length-sorted like `corpus shard`)."""
    order = np.argsort(lengths_s, kind="stable") if sort else np.arange(len(lengths_s))
    paths = []
    for s in range(0, len(order), per_shard):
        items = []
        for i in order[s:s + per_shard]:
            n = int(round(lengths_s[i] * SR))
            meta = {"id": f"u{i:05d}", "num_frames": n, "sample_rate": SR, "duration": n / SR,
                    "transcript": f"t{i}", "level": (i % 900 + 1) / 1000}
            items.append((f"u{i:05d}", encode_audio(signal_for(i, n), SR, fmt), meta))
        p = root / f"shard.{s // per_shard:06d}.tar"
        write_one_shard(p, items)
        paths.append(str(p))
    return paths


def gamma_lengths(n: int, seed: int = 0, scale: float = 1.0) -> list[float]:
    """LibriSpeech-like lengths: gamma-shaped, clipped to 2–30 s (times ``scale``)."""
    rng = np.random.default_rng(seed)
    return (np.clip(rng.gamma(4.0, 3.0, n), 2.0, 30.0) * scale).round(3).tolist()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[list[str], list[float]]:
    """120 utterances of 0.2–3 s in 5 shards (LibriSpeech lengths scaled by 1/10)."""
    root = tmp_path_factory.mktemp("small")
    lengths = gamma_lengths(120, seed=1, scale=0.1)
    return build_shards(root, lengths, per_shard=25), lengths


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


# -- the pure batching core ---------------------------------------------------------------


@pytest.mark.parametrize("budget", [30.0, 60.0, 150.0])
def test_duration_batches_budget_padding_and_coverage(budget):
    lengths = gamma_lengths(3000, seed=budget.__hash__() % 7)
    batches = duration_batches(lengths, budget, bucket_buffer=50)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    real = padded = 0.0
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) * longest <= budget + 1e-9  # padding counts against the budget
        assert longest - min(lengths[i] for i in b) <= 10.0 + 1e-9
        real += sum(lengths[i] for i in b)
        padded += len(b) * longest
    assert 1 - real / padded < 0.10


def test_duration_batches_fixed_queue_is_thesis_behaviour():
    lengths = gamma_lengths(2000, seed=3)
    batches = duration_batches(lengths, 150, bucket_buffer=300, target_padding=1.0, max_queue=300)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 150 for b in batches)


def test_span_policies():
    lengths = [1.0, 1.5, 2.0, 14.0, 14.5, 25.0, 3.0, 13.0]
    split = duration_batches(lengths, 100, bucket_buffer=100, max_span_seconds=5)
    assert sorted(i for b in split for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 5 for b in split)
    batcher = DurationBatcher(100, bucket_buffer=100, max_span=5, span_policy="drop")
    for i, x in enumerate(lengths):
        assert batcher.push(i, x) == []
    kept = batcher.flush()
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 5 for b in kept)
    assert batcher.dropped + sum(map(len, kept)) == len(lengths)
    with pytest.raises(ValueError):
        duration_batches(lengths, 10, span_policy="squeeze")


def test_item_longer_than_budget_is_alone():
    batches = duration_batches([5.0, 50.0, 6.0], 20, bucket_buffer=1)
    assert [2 if 1 in b else len(b) for b in batches].count(2) == 1
    assert [b for b in batches if 1 in b] == [[1]]


# -- the stream -----------------------------------------------------------------------------


def test_one_epoch_reads_everything_once_and_decodes_right(small):
    paths, lengths = small
    stream = ShardBatchStream(paths, 6.0, infinite=False, seed=0, max_span_seconds=1.0)
    batches = list(stream)
    keys = keys_of(batches)
    assert sorted(keys) == [f"u{i:05d}" for i in range(len(lengths))]
    for b in batches:
        assert isinstance(b, Batch)
        assert b.audio.dtype == torch.float32 and b.lengths.dtype == torch.int64
        assert len(b) * b.audio.shape[1] <= 6.0 * SR  # seconds budget, padding counted
        for row, (n, meta) in enumerate(zip(b.lengths.tolist(), b.meta)):
            assert n == meta["num_frames"]
            assert torch.allclose(b.audio[row, :n], torch.tensor(meta["level"]), atol=1e-4)
            assert torch.all(b.audio[row, n:] == 0)
    assert 0 <= padding_fraction(batches) < 0.10


@pytest.mark.parametrize("n_shards", [1, 3, 5])
def test_two_ranks_two_workers_exactly_once(small, tmp_path, n_shards):
    """2 ranks × 2 DataLoader workers: disjoint, complete, nobody starves (even 1 shard)."""
    paths, lengths = small
    if n_shards != 5:
        paths = build_shards(tmp_path, lengths, per_shard=-(-len(lengths) // n_shards))
    assert len(paths) == n_shards
    per_rank = []
    for rank in range(2):
        stream = ShardBatchStream(paths, 6.0, infinite=False, rank=rank, world_size=2, seed=5)
        per_rank.append(keys_of(make_loader(stream, num_workers=2)))
    all_keys = per_rank[0] + per_rank[1]
    assert collections.Counter(all_keys) == collections.Counter(
        f"u{i:05d}" for i in range(len(lengths)))
    assert all(len(k) >= len(lengths) // 8 for k in per_rank)  # no rank starves
    # worker shares too (simulated workers, no processes)
    for rank in range(2):
        for w in range(2):
            s = ShardBatchStream(paths, 6.0, infinite=False, rank=rank, world_size=2, seed=5)
            s.worker_override = (w, 2)
            assert len(keys_of(s)) > 0


def test_epochs_reshuffle_and_infinite_stream_cycles(small):
    paths, lengths = small
    s = ShardBatchStream(paths, 6.0, infinite=False, seed=0)
    e0 = keys_of(s)
    s.set_epoch(1)
    e1 = keys_of(s)
    assert sorted(e0) == sorted(e1) and e0 != e1
    inf = ShardBatchStream(paths, 6.0, infinite=True, seed=0)
    it = iter(inf)
    seen = []
    while len(seen) < 2 * len(lengths):
        seen += next(it).keys
    assert collections.Counter(seen[:len(lengths)]) == collections.Counter(e0)


def test_start_batch_resumes_exactly(small):
    paths, _ = small
    calls = []

    def transform(utts: list[Utterance], rng: np.random.Generator) -> list[Utterance]:
        gain = float(rng.uniform(0.5, 1.0))
        calls.append(gain)
        return [Utterance(u.key, u.audio * gain, {**u.meta, "gain": gain}) for u in utts]

    full = list(ShardBatchStream(paths, 6.0, infinite=False, seed=3, transform=transform))
    resumed = list(ShardBatchStream(paths, 6.0, infinite=False, seed=3, transform=transform,
                                    start_batch=4))
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed):
        assert a.keys == b.keys
        assert torch.equal(a.audio, b.audio)
        assert a.meta[0]["gain"] == b.meta[0]["gain"]


def test_start_batch_with_workers_matches_round_robin(small):
    paths, _ = small
    loader = iter(make_loader(ShardBatchStream(paths, 4.0, seed=1), num_workers=2))
    ref = [next(loader).keys for _ in range(9)]
    loader = iter(make_loader(ShardBatchStream(paths, 4.0, seed=1, start_batch=5), num_workers=2))
    assert [next(loader).keys for _ in range(4)] == ref[5:]


def test_padding_on_librispeech_like_lengths_from_length_sorted_shards(tmp_path):
    lengths = gamma_lengths(400, seed=7, scale=0.1)  # 0.2–3 s: LibriSpeech shape, 1/10 scale
    paths = build_shards(tmp_path, lengths, per_shard=50)
    batches = list(ShardBatchStream(paths, 15.0, infinite=False, seed=0, max_span_seconds=1.0))
    assert sorted(keys_of(batches)) == sorted(f"u{i:05d}" for i in range(len(lengths)))
    assert padding_fraction(batches) < 0.10
    # also when shards are not length sorted (random strategy)
    paths = build_shards(tmp_path / "r", lengths, per_shard=50, sort=False)
    batches = list(ShardBatchStream(paths, 15.0, infinite=False, seed=0, max_span_seconds=1.0))
    assert padding_fraction(batches) < 0.10


def test_long_utterances_are_cropped_to_fit(tmp_path):
    paths = build_shards(tmp_path, [1.0, 2.0, 8.0], per_shard=3, fmt="flac")
    batches = list(ShardBatchStream(paths, 3.0, infinite=False, max_utterance_seconds=5.0,
                                    max_span_seconds=None))
    assert max(int(b.lengths.max()) for b in batches) == 3 * SR  # cropped to the budget
    assert all(len(b) * b.audio.shape[1] <= 3 * SR for b in batches)
    assert sorted(keys_of(batches)) == ["u00000", "u00001", "u00002"]


def test_list_shards(small, tmp_path):
    paths, _ = small
    d = Path(paths[0]).parent
    (d / ".shard.000009.tar.tmp").write_bytes(b"x")  # a writer's temp file is never listed
    (d / ".shard.000010.tmp").write_bytes(b"x")
    assert list_shards(d) == sorted(paths)
    assert list_shards(str(d / "shard.*.tar")) == sorted(paths)
    assert list_shards(str(d / "shard.{000000..000001}.tar")) == sorted(paths)[:2]
    assert list_shards([paths[1], paths[0], paths[1]]) == [paths[1], paths[0]]
    with pytest.raises(FileNotFoundError):
        list_shards(str(tmp_path / "none-*.tar"))


def test_reads_nanow2v2_style_and_gzipped_shards(tmp_path):
    """nanow2v2 keys look like '0/19-198-0001'; its json has no 'id' or 'duration'."""
    import gzip

    p = tmp_path / "nano.000000.tar"
    with tarfile.open(p, "w") as tf:
        for i, n in enumerate((8000, 12000)):
            for name, data in ((f"{i}/19-198-000{i}.wav", encode_audio(signal_for(i, n), SR, "wav")),
                               (f"{i}/19-198-000{i}.json",
                                json.dumps({"sample_id": f"19-198-000{i}", "num_frames": n,
                                            "sample_rate": SR}).encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    gz = tmp_path / "nano.000001.tar.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    for shard in (p, gz):
        b = list(ShardBatchStream([str(shard)], 10.0, infinite=False))
        assert sorted(keys_of(b)) == ["0/19-198-0000", "1/19-198-0001"]
        assert sorted(int(x) for bb in b for x in bb.lengths) == [8000, 12000]


def test_collate_and_batch_properties():
    utts = [Utterance("a", np.ones(3, np.float32), {}), Utterance("b", np.ones(1, np.float32), {})]
    b = collate(utts)
    assert b.audio.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.lengths.tolist() == [3, 1]
    assert b.seconds == pytest.approx(4 / SR)
    assert b.padding_fraction == pytest.approx(2 / 6)
    assert [u.audio.tolist() for u in b.utterances()] == [[1, 1, 1], [1]]
