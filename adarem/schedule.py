"""Learning-rate schedules from timm, stepped every iteration (warm-up in epochs)."""

from __future__ import annotations

import torch
from timm.scheduler import create_scheduler_v2

from adarem.config import ScheduleConfig


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """A timm scheduler whose ``step_update(num_updates)`` is called after every optimizer step."""
    common = dict(num_epochs=epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                  step_on_epochs=False, updates_per_epoch=steps_per_epoch, warmup_prefix=True)
    if cfg.name == "cosine":
        return create_scheduler_v2(optimizer, sched="cosine", min_lr=cfg.min_lr, **common)[0]
    milestones = list(cfg.milestones) if cfg.name == "step" else [10 ** 9]
    return create_scheduler_v2(optimizer, sched="multistep", decay_milestones=milestones,
                               decay_rate=cfg.decay_rate if cfg.name == "step" else 1.0, **common)[0]
