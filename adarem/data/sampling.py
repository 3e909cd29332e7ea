"""Which sample indices each rank reads, batch by batch: exact, resumable, world-size invariant.

Train: one permutation per epoch (seeded by seed and epoch), cut into global batches; the last
partial global batch is dropped, so every backend and world size sees ``n // global_batch``
iterations per epoch. Rank r reads the r-th slice of every global batch, so the global batch is
the same set of samples whatever the world size.

Validation: rank r reads indices r, r + W, r + 2W, ... with no padding, so every validation
sample is evaluated exactly once across ranks.
"""

from __future__ import annotations

import torch


def train_batches(n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int,
                  start_batch: int = 0) -> list[list[int]]:
    per_rank = global_batch // world
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    steps = n // global_batch
    return [perm[k * global_batch + rank * per_rank: k * global_batch + (rank + 1) * per_rank]
            for k in range(start_batch, steps)]


def val_batches(n: int, per_rank_batch: int, rank: int, world: int) -> list[list[int]]:
    mine = list(range(rank, n, world))
    return [mine[i:i + per_rank_batch] for i in range(0, len(mine), per_rank_batch)]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: independent of workers, ranks and resumption."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index
