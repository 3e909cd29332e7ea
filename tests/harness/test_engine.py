"""Units of the training engine: the oscillation tracker and the divergence watch."""

from __future__ import annotations

import math

import torch

from adarem.engine import LossWatch
from adarem.oscillation import OscillationTracker


def _run_tracker(lr: float, every: int, steps: int = 12):
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = OscillationTracker(model, every)
    records = []
    for step in range(1, steps + 1):
        tracker.before_step(step)
        opt.zero_grad()
        (model.weight ** 2).sum().backward()  # curvature 2: lr 0.9 flips every step, lr 0.1 never
        opt.step()
        rec = tracker.after_step(step)
        if rec:
            records.append(rec)
    return records


def test_oscillation_fraction_is_one_when_every_update_flips():
    records = _run_tracker(lr=0.9, every=4)
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(r["flip_fraction"] == 1.0 and r["per_layer"]["weight"] == 1.0 for r in records)


def test_oscillation_fraction_is_zero_for_monotone_descent():
    records = _run_tracker(lr=0.1, every=3)
    assert records and all(r["flip_fraction"] == 0.0 for r in records)


def test_loss_watch_names_the_first_bad_step():
    watch = LossWatch(limit=100.0)
    for step, value in [(1, 2.0), (2, 1.5), (3, math.inf), (4, math.nan)]:
        watch.add(step, torch.tensor(value))
    div = watch.check()
    assert div.step == 3 and math.isinf(div.loss)
    watch.add(5, torch.tensor(1e6))
    assert watch.check().step == 5  # finite but absurd
    watch.add(6, torch.tensor(1.0))
    assert watch.check() is None
