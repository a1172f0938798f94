"""Who reads which shards: the data consumers (DDP rank × DataLoader worker) and their shares.

Every epoch the shard list is shuffled with the same seed on every rank. Whole rounds of
shards (``len(shards) // consumers * consumers`` of them) are dealt out one shard per
consumer; the remaining shards are read by every consumer, each keeping every
``consumers``-th utterance. So the shares are disjoint, every utterance is seen exactly once
per epoch across ranks × workers, and no consumer starves when there are fewer shards than
consumers.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from corpus_tools.data.rng import shard_order_rng


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The DDP position: as given, else from ``torch.distributed`` or torchrun's environment."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    r, w = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    elif "WORLD_SIZE" in os.environ:  # torchrun sets these before init_process_group
        r, w = int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return (r if rank is None else int(rank)), (w if world_size is None else int(world_size))


def consumer_plan(shards: Sequence[str], consumer: int, consumers: int, epoch: int, seed: int,
                  shuffle: bool = True) -> tuple[list[str], list[str]]:
    """This consumer's whole shards and the shards it shares by sample index, for an epoch."""
    order = list(shards)
    if shuffle:
        perm = shard_order_rng(seed, epoch).permutation(len(order))
        order = [order[i] for i in perm]
    whole = len(order) // consumers * consumers
    return order[consumer:whole:consumers], order[whole:]
