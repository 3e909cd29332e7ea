"""Learning-rate schedules from timm, stepped every iteration (warm-up in epochs).

What a run of ``trainer.epochs`` epochs of ``S`` optimizer steps gets (``N = epochs * S`` steps in
all; ``f(t)`` is the lr the schedule sets after ``t`` steps, so step ``k`` runs at ``f(k - 1)``):

- warm-up: the first ``W = ceil(schedule.warmup_epochs * S)`` steps ramp linearly from
  ``schedule.warmup_lr`` (``f(0)``, the first step's lr) to ``optimizer.lr``, which ``f(W)`` reaches;
  the warm-up is part of the ``trainer.epochs``, never added to them.
- ``cosine``: from ``optimizer.lr`` at ``f(W)`` down to ``schedule.min_lr`` at ``f(N)``, the value set
  when the last step ends (the lr logged at the end of the run): the cosine spans the steps after the
  warm-up and finishes exactly with the run. Without warm-up this is the cosine the suite always used.
- ``step``: ``optimizer.lr * decay_rate^i`` after the i-th milestone, milestones counted in epochs from
  the start of training, warm-up included (as torchvision's and the papers' recipes count them): the
  first step of epoch ``m + 1`` runs at the decayed lr (timm's own multistep decays one step early).
  The milestones must fall after the warm-up and before the last epoch (adarem/config.py checks it).
- ``constant``: ``optimizer.lr`` after the warm-up.
"""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

from adarem.config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, epochs: int, steps_per_epoch: int) -> int:
    """Steps of linear warm-up: warmup_epochs in steps, rounded up (a fractional warm-up is never
    dropped), and at most all steps but one (adarem/config.py refuses warmup_epochs >= epochs)."""
    if cfg.warmup_epochs <= 0:
        return 0
    return min(math.ceil(cfg.warmup_epochs * steps_per_epoch - 1e-9), epochs * steps_per_epoch - 1)


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """A timm scheduler whose ``step_update(num_updates)`` is called after every optimizer step."""
    total = epochs * steps_per_epoch
    warm = warmup_steps(cfg, epochs, steps_per_epoch)
    common = dict(warmup_t=warm, warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    if cfg.name == "cosine":
        # warmup_prefix: the cosine's own clock starts when the warm-up ends, and it lasts the rest
        return CosineLRScheduler(optimizer, t_initial=total - warm, lr_min=cfg.min_lr, warmup_prefix=True, **common)
    # timm decays at update t when t + 1 >= milestone; + 1 moves each decay to the first step of the
    # epoch after the milestone. warmup_prefix=False: milestones count from the start of training.
    milestones = [m * steps_per_epoch + 1 for m in cfg.milestones] if cfg.name == "step" else []
    return MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=cfg.decay_rate if cfg.name == "step" else 1.0,
                                warmup_prefix=False, **common)
