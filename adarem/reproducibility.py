"""Seeding and deterministic mode."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool, rank: int = 0) -> None:
    """Seed python, numpy and torch with ``seed + rank`` (as timm's train.py does); in deterministic
    mode, also forbid nondeterministic kernels (on CPU a resumed run then ends bit-identical to an
    uninterrupted one).

    Per rank: dropout and drop-path draw from torch's generator, and with one seed every rank drew
    the same masks, so image j of each rank's share of a global batch got the same mask (noise
    correlated across the batch, more so with more ranks). Rank 0 keeps ``seed``: a single process
    is seeded as before, and rank 0's initial weights, which DDP broadcasts, are a single process's.
    Data order and augmentation do not use these generators (adarem/data/sampling.py)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    # Both ways, every time: compare.py trains many runs in one worker process, and a run after a
    # deterministic one kept torch's deterministic kernels (and their speed) while its record said
    # trainer.deterministic=false.
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
