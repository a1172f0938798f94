"""The random generators of the shard stream, in one place.

Training is deterministic by seed: the batch order of an epoch and the random choices of the
transform applied to a batch (the simulation's degradation) are functions of the run's seed
and of the batch's position only, never of the process that happens to read it. The offline
simulation (``corpus simulate``) draws from the same ``batch_rng`` so that a batch at the same
index gets the same degradation online and offline.
"""

from __future__ import annotations

import numpy as np

_TRANSFORM_TAG = 0x7A  # keeps transform draws apart from the order draws of the same seed
_SHARD_ORDER_TAG = 0x5A4D


def batch_rng(seed: int, batch_index: int, consumer: int = 0, workers: int = 1) -> np.random.Generator:
    """The Generator handed to the transform of batch ``batch_index`` of a run seeded ``seed``.

    ``consumer`` / ``workers`` name the DataLoader worker (and DDP rank) reading the stream, so
    parallel readers never share draws.
    """
    return np.random.default_rng([int(seed), _TRANSFORM_TAG, int(consumer), int(workers), int(batch_index)])


def epoch_rng(seed: int, epoch: int, consumer: int, consumers: int) -> np.random.Generator:
    """The Generator that orders the batches of ``epoch`` for one consumer of the stream."""
    return np.random.default_rng([int(seed), int(epoch), int(consumer), int(consumers)])


def shard_order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The Generator that shuffles the shard list of ``epoch`` (the same on every consumer)."""
    return np.random.default_rng([int(seed), int(epoch), _SHARD_ORDER_TAG])
