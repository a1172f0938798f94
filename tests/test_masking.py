"""Span masking and distractor sampling on every row length, the batch's longest row included.

A property test over many seeds and random length mixes: each row gets exactly
n_r = floor(T · p / L) distinct span starts, every span is whole and inside the row's valid
frames, the masked set is the union of the spans, and the last frames of the longest row are
masked about as often as when the same row sits in a batch padded beyond it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.losses import sample_negatives
from trainer.masking import span_mask, span_starts

SPAN = 10
P = 0.5


def _random_lengths(rng: np.random.Generator) -> list[int]:
    n = int(rng.integers(1, 9))
    lengths = [int(rng.integers(1, 120)) for _ in range(n)]
    # Rows equal to the batch maximum and rows within span - 1 frames of it.
    top = max(lengths)
    lengths += [top] * int(rng.integers(0, 3)) + [max(1, top - int(rng.integers(1, SPAN))) for _ in range(2)]
    return lengths


def test_every_span_is_whole_inside_its_row_and_the_mask_is_their_union():
    rng = np.random.default_rng(0)
    for seed in range(300):
        lengths = _random_lengths(rng)
        T = max(lengths)
        lens = torch.tensor(lengths)
        gen = torch.Generator().manual_seed(seed)
        starts = span_starts(lens, T, P, SPAN, generator=gen)
        mask = span_mask(lens, T, P, SPAN, generator=torch.Generator().manual_seed(seed))
        assert mask.shape == (len(lengths), T)
        for b, n in enumerate(lengths):
            row_starts = torch.nonzero(starts[b]).flatten().tolist()
            assert len(row_starts) == int(n * P // SPAN), (seed, lengths, b)
            assert len(set(row_starts)) == len(row_starts)
            assert all(0 <= s and s + SPAN <= n for s in row_starts), (seed, lengths, b, row_starts)
            union = torch.zeros(T, dtype=torch.bool)
            for s in row_starts:
                union[s:s + SPAN] = True
            assert torch.equal(mask[b], union), (seed, lengths, b)


def test_the_longest_row_is_masked_to_its_end_as_when_padded():
    """The last frames of the batch's longest row are masked as often as with padding after it."""
    n, reps = 40, 4000
    alone = span_mask(torch.full((reps,), n), n, P, SPAN, generator=torch.Generator().manual_seed(1))
    padded = span_mask(torch.full((reps,), n), n + 25, P, SPAN, generator=torch.Generator().manual_seed(2))[:, :n]
    last = slice(n - SPAN + 1, n)
    rate_alone = alone[:, last].float().mean().item()
    rate_padded = padded[:, last].float().mean().item()
    assert rate_alone > 0.05, f"the last {SPAN - 1} frames of the longest row are never masked"
    assert abs(rate_alone - rate_padded) < 0.03, (rate_alone, rate_padded)


def test_sub_second_rows_mask_whole_spans():
    """20–39 frames (0.4–0.8 s): the one span is whole even when the row is the batch maximum."""
    for T in range(20, 40):
        for seed in range(20):
            mask = span_mask(torch.tensor([T]), T, P, SPAN, generator=torch.Generator().manual_seed(seed))
            assert int(mask.sum()) == SPAN, (T, seed, int(mask.sum()))


def test_a_row_with_one_masked_frame_never_yields_an_out_of_range_negative():
    # The last row of the flat list has a single masked frame: its "other" frame must not be N.
    for rows in ([0, 0, 0, 1], [1], [0, 1, 1, 2], [3, 3, 4]):
        t = torch.tensor(rows)
        for seed in range(20):
            negs, usable = sample_negatives(t, 100, generator=torch.Generator().manual_seed(seed))
            assert int(negs.max()) < len(rows) and int(negs.min()) >= 0, (rows, seed)
            counts = {r: rows.count(r) for r in rows}
            assert usable.tolist() == [counts[r] >= 2 for r in rows]


@pytest.mark.slow
def test_pretraining_on_sub_second_utterances_runs(tmp_path):
    """Table 14's shortest segmentations: shards of 0.4–0.8 s utterances, tiny config, several
    seeds, a few hundred steps each — the batch's longest row is often a single span long."""
    import polars as pl
    import pyannote.audio

    from corpus_tools.shards import write_shards
    from trainer.pretrain import PretrainArgs, pretrain

    sample = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        d = float(rng.uniform(0.4, 0.8))
        t = float(rng.uniform(0.0, 29.0))
        rows.append(dict(segment_id=f"u{i:03d}", recording_id="sample", path=str(sample), start=t, end=t + d,
                         duration=d, text="", speaker=None, method="test", language="en", session="sample"))
    write_shards(pl.DataFrame(rows), tmp_path / "shards", samples_per_shard=20, progress=False)
    torch.set_num_threads(1)
    for seed in range(3):
        result = pretrain(PretrainArgs(shards=str(tmp_path / "shards"), out=str(tmp_path / f"run{seed}"),
                                       config="tiny", steps=200, batch_seconds=float(2 + seed), seed=seed,
                                       log_every=50, ckpt_every=200, quiet=True, num_workers=0))
        assert result["step"] == 200
        assert np.isfinite(result["last_train"]["loss"])
