"""The torchvision/DataLoader backend and the synthetic backend, behind one small interface.

Every loader has ``len(loader)`` (batches per epoch on this rank), ``loader.epoch(epoch,
start_batch)`` (an iterator of ``(images, labels)``), ``num_samples`` (samples per epoch over all
ranks) and ``corrupt_count`` (unreadable files skipped so far on this rank).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from adarem.data.datasets import ReproducibleDataset


class TorchLoader:
    def __init__(self, dataset: ReproducibleDataset, plan: Callable[[int, int], list[list[int]]],
                 num_batches: int, num_samples: int, num_workers: int, pin_memory: bool):
        self.dataset = dataset
        self.plan = plan  # (epoch, start_batch) -> list of index batches for this rank
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.corrupt_count = 0

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [[(i, epoch) for i in b] for b in self.plan(epoch, start_batch)]
        if not batches:
            return
        # A private generator: DataLoader draws its workers' base seed from it, and drawing from
        # the global RNG instead would shift dropout's random stream between a run and its resume.
        # (Augmentation does not use the workers' seeds: it is seeded per sample.)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, persistent_workers=False,
                            generator=torch.Generator().manual_seed(epoch))
        for x, y, corrupt in loader:
            self.corrupt_count += int(corrupt.sum())
            yield x, y


class SyntheticLoader:
    """Random images generated once on the device and replayed: no input-pipeline cost."""

    def __init__(self, num_batches: int, per_rank_batch: int, num_samples: int, shape: tuple[int, ...],
                 num_classes: int, device: torch.device, seed: int):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.x = torch.randn((per_rank_batch, *shape), generator=gen).to(device)
        self.y = torch.randint(0, num_classes, (per_rank_batch,), generator=gen).to(device)
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.corrupt_count = 0

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, start_batch: int = 0):
        for _ in range(start_batch, self.num_batches):
            yield self.x, self.y
