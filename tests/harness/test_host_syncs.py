"""The training step reads nothing back to the host between its logging / stop-decision steps.

On a GPU every host read of a device tensor (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``,
``.cpu()``) is a sync that stops the CPU from running ahead of the GPU. No GPU here: the test
counts the Python-level reads themselves, per step, through the real ``engine.train_epoch`` with
AdaRem (and SGD-momentum) under a 1-rank gloo process group, so that the collective stop decision
(``StopFlag.poll``) and the divergence check run as they do under DDP. (Reads inside C++ kernels
are not seen; the GPU check counts real syncs when a GPU is lent.)
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from adarem.config import OptimizerConfig, TrainerConfig
from adarem.engine import Precision, TrainState, train_epoch
from adarem.optim.factory import build_optimizer
from adarem.schedule import build_scheduler
from adarem.config import ScheduleConfig
from adarem.run.signals import StopFlag

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


class CountingLoader:
    """Batches of random images; counts host reads once ``armed`` (after the warm-up steps that
    build caches and compile)."""

    def __init__(self, n: int, state: TrainState):
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen))
                        for _ in range(n)]
        self.state = state
        self.reads: list[tuple[int, str]] = []
        self.arm_after = 3

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_batch=0):
        yield from self.batches[start_batch:]


@contextlib.contextmanager
def count_host_reads(loader: CountingLoader):
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            step = loader.state.global_step
            if step >= loader.arm_after:
                caller = sys._getframe(1).f_code
                loader.reads.append((step, name, f"{Path(caller.co_filename).name}:{caller.co_name}"))
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@pytest.fixture()
def one_rank_group(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # monkeypatch: later tests' subprocesses (torchrun, sbatch) must not inherit this port
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# AdaRem counts steps in CPU tensors by design (like torch's non-capturable optimizers): reading
# them (one .tolist() per group and step, in AdaRem.step) is never a device sync.
HOST_BY_DESIGN = {("tolist", "adarem.py:step")}


@pytest.mark.parametrize("name", ["adarem", "sgd"])
def test_no_host_read_between_logging_and_stop_decisions(one_rank_group, monkeypatch, name):
    """AdaRem's foreach path as it runs on a GPU (multi-tensor ops, no per-tensor host scalars; on
    CPU tensors it runs tensor-major with host scalars instead, which is no sync there)."""
    import adarem.optim.adarem as adarem_module

    monkeypatch.setattr(adarem_module, "FOREACH_TENSOR_MAJOR", False)
    impl = "foreach"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    optimizer = build_optimizer(OptimizerConfig(name=name, lr=0.01, momentum=0.9 if name == "sgd" else 0.0,
                                                weight_decay=1e-4, impl=impl), model)
    state = TrainState()
    loader = CountingLoader(40, state)
    scheduler = build_scheduler(ScheduleConfig(), optimizer, 1, len(loader))
    cfg = TrainerConfig(log_every=16, stop_check_every=10)
    stop = StopFlag(distributed=True)
    logged = []
    with count_host_reads(loader):
        out = train_epoch(model, loader, optimizer, scheduler, Precision(None, None), torch.device("cpu"), cfg,
                          state, stop, logged.append, None, lambda: False)
    assert out.reason == "epoch_end" and state.global_step == 40
    reads = [(s, n, where) for s, n, where in loader.reads if (n, where) not in HOST_BY_DESIGN]
    steps_with_reads = {s for s, _, _ in reads}
    # only where a decision is due: the loss line (16, 32), the stop decision (10, 20, 30, 40 = the end)
    assert steps_with_reads <= {10, 16, 20, 30, 32, 40}, reads
    assert {10, 16} <= steps_with_reads  # the counter sees the reads that are there
    if name == "adarem":  # and it did see the step counters: one read per group and step (inside
        # step k the harness's global_step is still k - 1, so steps 4..40 are counted)
        assert len([r for r in loader.reads if (r[1], r[2]) in HOST_BY_DESIGN]) == \
            len(optimizer.param_groups) * (40 - loader.arm_after)


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    """One of 2 gloo ranks: a DDP-wrapped model through the real train_epoch, host reads counted."""
    import json
    import os

    import adarem.optim.adarem as adarem_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        adarem_module.FOREACH_TENSOR_MAJOR = False  # the GPU's multi-tensor path (see above)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
        ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
        optimizer = build_optimizer(OptimizerConfig(name="adarem", lr=0.01, weight_decay=1e-4, impl="foreach"), model)
        state = TrainState()
        loader = CountingLoader(40, state)
        scheduler = build_scheduler(ScheduleConfig(), optimizer, 1, len(loader))
        cfg = TrainerConfig(log_every=16, stop_check_every=10)
        with count_host_reads(loader):
            out = train_epoch(ddp, loader, optimizer, scheduler, Precision(None, None), torch.device("cpu"), cfg,
                              state, StopFlag(distributed=True), lambda rec: None, None, lambda: False)
        reads = [(s, n, where) for s, n, where in loader.reads if (n, where) not in HOST_BY_DESIGN]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"reason": out.reason, "steps": state.global_step, "reads": reads}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_no_host_read_between_decisions_under_two_ranks(tmp_path):
    """The same count under DDP with 2 gloo ranks: the all-reduced loss window, the collective
    stop decision and DDP's own hooks add no host read between the logging / decision steps."""
    import json

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["reason"] == "epoch_end" and res["steps"] == 40
        steps_with_reads = {s for s, _, _ in res["reads"]}
        assert steps_with_reads <= {10, 16, 20, 30, 32, 40}, res["reads"]
        assert {10, 16} <= steps_with_reads
