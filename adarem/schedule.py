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
  The milestones must fall after the warm-up (adarem/config.py checks it).
- ``constant``: ``optimizer.lr`` after the warm-up.

A run shorter than its recipe (a smoke run: ``experiment=paper_resnet50 trainer.epochs=2``) is the
recipe's schedule cut at ``trainer.epochs``, never stretched to fit: milestones at or beyond
``trainer.epochs`` never decay the lr, and a warm-up of ``trainer.epochs`` or more keeps its slope
and is cut when the run ends (no cosine follows). ``truncation`` says so in one line; train.py prints
it as a ``note:`` at start-up and compare.py before its first trial.
"""

from __future__ import annotations

import math
import sys

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

from adarem.config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, epochs: int, steps_per_epoch: int) -> int:
    """Steps of linear warm-up: warmup_epochs in steps, rounded up (a fractional warm-up is never
    dropped). It may exceed the run's steps: a warm-up longer than the run is cut, not compressed."""
    if cfg.warmup_epochs <= 0:
        return 0
    return math.ceil(cfg.warmup_epochs * steps_per_epoch - 1e-9)


def truncation(cfg: ScheduleConfig, epochs: int) -> str | None:
    """One line saying which part of the schedule a run of ``epochs`` epochs never reaches (a smoke
    run of a longer recipe), or None when the whole schedule happens within the run."""
    parts = []
    if cfg.warmup_epochs >= epochs and cfg.warmup_epochs > 0:
        after = {"cosine": "; no cosine decay follows", "step": "; no milestone is reached"}.get(cfg.name, "")
        parts.append(f"the warm-up (schedule.warmup_epochs={cfg.warmup_epochs:g}) is cut when the run ends: the lr "
                     f"rises from schedule.warmup_lr only {min(1.0, epochs / cfg.warmup_epochs):.0%} of the way to "
                     f"optimizer.lr{after}")
    elif cfg.name == "step":
        late = [m for m in cfg.milestones if m >= epochs]
        if late:
            one = len(late) == 1
            parts.append(f"schedule.milestones {late} {'is' if one else 'are'} at or beyond trainer.epochs="
                         f"{epochs} and never {'decays' if one else 'decay'} the lr")
    if not parts:
        return None
    return (f"schedule truncated at trainer.epochs={epochs}: {'; '.join(parts)} (the recipe's first {epochs} "
            f"epoch(s), as a smoke run; the full schedule needs more epochs)")


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """A timm scheduler whose ``step_update(num_updates)`` is called after every optimizer step.

    Its state (``state_dict()``) is a function of the configuration and this code only: nothing in it
    changes as the run steps. adarem/run/checkpoint.py compares a checkpoint's against it on resume."""
    note = truncation(cfg, epochs)
    if note and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(f"note: {note}", file=sys.stderr, flush=True)
    total = epochs * steps_per_epoch
    warm = warmup_steps(cfg, epochs, steps_per_epoch)
    common = dict(warmup_t=warm, warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    if cfg.name == "cosine":
        # warmup_prefix: the cosine's own clock starts when the warm-up ends, and it lasts the rest
        # (at least one step for timm; a warm-up as long as the run never reaches it)
        return CosineLRScheduler(optimizer, t_initial=max(total - warm, 1), lr_min=cfg.min_lr, warmup_prefix=True,
                                 **common)
    # timm decays at update t when t + 1 >= milestone; + 1 moves each decay to the first step of the
    # epoch after the milestone. warmup_prefix=False: milestones count from the start of training.
    milestones = [m * steps_per_epoch + 1 for m in cfg.milestones] if cfg.name == "step" else []
    return MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=cfg.decay_rate if cfg.name == "step" else 1.0,
                                warmup_prefix=False, **common)
