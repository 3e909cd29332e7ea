"""Units of the training engine: the oscillation tracker, the divergence watch and the batches
handed to the model (device_batches)."""

from __future__ import annotations

import math

import pytest
import torch

from adarem.engine import LossWatch, device_batches
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


class UInt8Loader:
    """A loader whose uint8 host batches are finished on the device, like TorchLoader."""

    def __init__(self, n: int, pin: bool, slow_copy: bool = False):
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen),
                         torch.randint(0, 10, (8,), generator=gen)) for _ in range(n)]
        self.pin, self.slow_copy = pin, slow_copy
        self.closed = self.read = 0
        self.corrupt_count = self.last_batch_corrupt = 0

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        try:
            for x, y in self.batches[start_batch:]:
                self.read += 1
                self.last_batch_corrupt = 1  # every batch "skipped one unreadable file"
                self.corrupt_count += 1
                # a fresh pinned copy per batch, dropped by the loader at once (like the DataLoader's
                # pin thread): its memory is reused while earlier copies may still be in flight
                yield (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)
        finally:
            self.closed += 1

    def to_device(self, x, y, device, channels_last):
        if self.slow_copy:
            torch.cuda._sleep(5_000_000)  # the side stream is still busy when compute wants the batch
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float().sub_(127.5).div_(64.0), y.to(device, non_blocking=True)


def test_device_batches_end_the_loaders_pass_when_left_early():
    """BN recalibration reads a few batches and leaves: the loader's pass must end then (the torch
    loader hands its DataLoader back to the pool), not when the generator is collected."""
    loader = UInt8Loader(4, pin=False)
    it = device_batches(loader, iter(loader.epoch()), torch.device("cpu"), False)
    x, _ = next(it)
    assert x.dtype == torch.float32 and loader.closed == 0
    it.close()
    assert loader.closed == 1
    assert len(list(device_batches(loader, iter(loader.epoch()), torch.device("cpu"), True))) == 4
    loader.read = 0
    assert len(list(device_batches(loader, iter(loader.epoch()), torch.device("cpu"), False, limit=2))) == 2
    assert loader.read == 2 and loader.closed == 3  # BN recalibration reads no batch beyond its limit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the side stream); run by scripts/gpu_check.sh")
def test_side_stream_batches_are_the_inline_batches_under_load():
    """On CUDA the next batch is staged on a side stream while the compute stream is busy: every
    batch the model reads must equal the one finished inline, when the side stream is still
    copying as compute asks for the batch (without the wait, compute reads a half-copied batch),
    when pinned host memory is reused, and when each batch is freed right after use. A pass left
    early takes the read-ahead batch back out of corrupt_count."""
    device = torch.device("cuda")
    loader = UInt8Loader(12, pin=True, slow_copy=True)
    want = [UInt8Loader.to_device(loader, x.pin_memory(), y, device, True) for x, y in loader.batches]
    torch.cuda.synchronize()
    busy = torch.randn(1024, 1024, device=device)
    seen = []
    for x, y in device_batches(loader, iter(loader.epoch()), device, True):
        seen.append((x.sum(dtype=torch.float64) + x[0, 0, 0, 0], y.clone()))
        del x, y  # freed while the side stream works: record_stream must hold the memory
        for _ in range(4):
            busy = torch.tanh(busy @ busy * 1e-3)
    torch.cuda.synchronize()
    assert len(seen) == len(want) and loader.closed == 1 and loader.corrupt_count == 12
    for (s, y), (wx, wy) in zip(seen, want):
        assert float(s) == float(wx.sum(dtype=torch.float64) + wx[0, 0, 0, 0]) and torch.equal(y, wy)
    loader.corrupt_count = 0
    it = device_batches(loader, iter(loader.epoch()), device, True)
    next(it), next(it)  # two batches trained on, a third staged
    it.close()
    assert loader.corrupt_count == 2 and loader.closed == 2
