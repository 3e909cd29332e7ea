"""The torchvision/DataLoader backend and the synthetic backend, behind one small interface.

Every loader has ``len(loader)`` (batches per epoch on this rank), ``loader.epoch(epoch,
start_batch)`` (an iterator of ``(images, labels)``), ``num_samples`` (samples per epoch over all
ranks) and ``corrupt_count`` (unreadable files skipped so far on this rank). A loader may also
define ``to_device(x, y, device, channels_last)``, which the engine calls on every batch it takes
(training, evaluation, BN recalibration) to finish it on the device.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from adarem.data.datasets import DataError, ReproducibleDataset
from adarem.data.transforms import normalize

# DataLoaders with live workers kept per TorchLoader: one for the passes over the data, one more
# for a pass nested inside another (BN recalibration on the training set in the middle of a
# training epoch). A deeper nesting gets a DataLoader whose workers end with its pass.
MAX_PERSISTENT = 2


def die_with_parent(parent: int) -> None:
    """In a loader's worker process (DALI's, DataLoader's): be killed when the process that started
    it dies. Such workers wait for tasks otherwise, and a kill -9 of the training process would
    leave them behind."""
    if os.getpid() == parent:  # not a child (a copy made in the process itself)
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


# The preemption signals (adarem.run.signals): SLURM's scancel and preemption, and a container
# runtime's stop, send them to every process of the job, the loader's workers included
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _worker_init(parent: int, worker_id: int) -> None:
    """A DataLoader worker leaves preemption to the training process, as DALI's workers do: it
    ignores the preemption signals (torch's own SIGTERM handler in the worker ended it on a SIGTERM
    from anyone but its parent; the parent's SIGCHLD handler then raised "DataLoader worker killed"
    at any point of the checkpoint and run-record writes, and a preempted run ended failed, or with
    run.json still "running", not checkpointed with exit 75). The training process ends its
    workers through their queues (and SIGKILL, in ``_shutdown_workers``, where one does not end);
    and a worker is killed with it if it dies."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(parent)


@contextlib.contextmanager
def frozen_heap():
    """Around the start of forked worker processes (DALI's, DataLoader's): the objects of this
    process are moved to the garbage collector's permanent generation (gc.freeze) while the
    workers fork, and back after (gc.unfreeze), so a forked worker's collector never collects its
    copy of this process's garbage. Garbage that this process had not collected yet (a failed
    loader's DALI pipeline kept in a reference cycle by a traceback: a test's pytest.raises, a
    failed trial of compare.py, which runs trials in one process) was otherwise collected in the
    worker, whose copy of DALI's backend has none of its threads: Pipeline.__del__'s Shutdown()
    crashed the worker (a segmentation fault), and the new pool failed to start ('Workers
    initialization failed', 'Worker data receiving interrupted') or hung. Both calls cost a list
    splice. If objects are already frozen (by someone else), they stay frozen, and this collects the
    garbage before the fork instead."""
    if gc.get_freeze_count():  # someone froze objects: unfreezing would thaw theirs too
        gc.collect()
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _PlanSampler:
    """The batch sampler of a kept DataLoader. It lives in the main process only (workers receive
    index batches through their queues), so each pass sets the batches it reads here before
    ``iter(loader)`` takes them."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchLoader:
    """Workers decode, crop and flip to uint8 CHW images; ``to_device`` copies the batch (from
    pinned memory, non-blocking, when the device is CUDA), converts it to float and normalises it
    there, channels_last when asked.

    Workers are persistent: one DataLoader with live workers serves every pass (epoch, evaluation,
    resume at ``start_batch``). What a pass reads is still decided by ``plan(epoch, start_batch)``
    in the main process, and each index carries its epoch to the workers, whose augmentation is
    seeded per (seed, epoch, index): outputs do not depend on which worker, which pass or which
    DataLoader produced them. A pass left early (a stop, BN recalibration's first batches) leaves
    at most ``prefetch_factor x num_workers`` batches in flight; the next pass discards them
    (DataLoader's own reset of persistent workers). A pass that fails drops its DataLoader.
    """

    def __init__(self, dataset: ReproducibleDataset, plan: Callable[[int, int], list[list[int]]],
                 num_batches: int, num_samples: int, num_workers: int, pin_memory: bool,
                 mean: Sequence[float], std: Sequence[float], persistent_workers: bool = True):
        self.dataset = dataset
        self.plan = plan  # (epoch, start_batch) -> list of index batches for this rank
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.corrupt_count = 0
        self.last_batch_corrupt = 0  # of the batch yielded last (a batch read ahead and dropped un-counts it)
        self._idle: list[DataLoader] = []  # kept DataLoaders not in a pass
        self._kept = 0  # kept DataLoaders alive (idle or in a pass)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_batches

    def _data_loader(self) -> tuple[DataLoader, bool]:
        if self._idle:
            return self._idle.pop(), True
        keep = self.persistent_workers and self._kept < MAX_PERSISTENT
        # A private generator: DataLoader draws its workers' base seed from it, and drawing from
        # the global RNG instead would shift dropout's random stream between a run and its resume.
        # (Augmentation does not use the workers' seeds: it is seeded per sample.)
        loader = DataLoader(self.dataset, batch_sampler=_PlanSampler(), num_workers=self.num_workers,
                            pin_memory=self.pin_memory, persistent_workers=keep,
                            generator=torch.Generator().manual_seed(0),
                            worker_init_fn=functools.partial(_worker_init, os.getpid()) if self.num_workers else None)
        self._kept += keep
        return loader, keep

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [[(i, epoch) for i in b] for b in self.plan(epoch, start_batch)]
        if not batches:
            return
        loader, kept = self._data_loader()
        loader.batch_sampler.batches = batches
        iterator = None
        reusable = False
        try:
            # workers fork here: every pass of a DataLoader not kept, the first of a kept one
            forks = self.num_workers > 0 and getattr(loader, "_iterator", None) is None
            with frozen_heap() if forks else contextlib.nullcontext():
                iterator = iter(loader)
            for x, y, corrupt in iterator:
                self.last_batch_corrupt = int(corrupt.sum())
                self.corrupt_count += self.last_batch_corrupt
                yield x, y
            reusable = True
        except GeneratorExit:  # the consumer stopped early
            reusable = True
            raise
        finally:
            if kept and reusable:
                self._idle.append(loader)
            else:
                # failed (or not kept): end its workers now, not whenever the traceback that
                # references this frame is collected (at exit that is noisy)
                _shutdown_workers(iterator)
                self._kept -= kept

    def close(self) -> None:
        """End the idle DataLoaders' workers now (otherwise they end with this object)."""
        for loader in self._idle:
            _shutdown_workers(getattr(loader, "_iterator", None))
        self._kept -= len(self._idle)
        self._idle.clear()

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            shape = (len(self.mean), 1, 1)
            self._stats[device] = (torch.tensor(self.mean, dtype=torch.float32).view(shape).to(device),
                                   torch.tensor(self.std, dtype=torch.float32).view(shape).to(device))
        return self._stats[device]

    def to_device(self, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                  channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> normalised float32 batch on ``device``. The copy is non-blocking (from the
        pinned batch when the device is CUDA) and queued on the current stream, like the kernels
        that follow it; channels_last is applied to the uint8 tensor, a quarter of the bytes."""
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        mean, std = self._mean_std(device)
        return normalize(x, mean, std), y


def _shutdown_workers(iterator) -> None:
    shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process DataLoader iterators
    if shutdown is not None:
        shutdown()
    for worker in getattr(iterator, "_workers", ()):  # torch's last resort, terminate(), is ignored
        if worker.is_alive():
            worker.kill()
            worker.join(5)


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


def lost_worker_error(exc: BaseException) -> DataError | None:
    """torch's DataLoader reports a worker that died (an out-of-memory kill, a crash) with a
    RuntimeError raised wherever the training thread happens to be (its SIGCHLD handler: in the
    middle of backward(), say), so a traceback; this is the one-line DataError said instead, as
    the DALI loader says it (adarem/data/dali_workers.py). None for any other exception."""
    text = str(exc)
    if type(exc) is not RuntimeError or not text.startswith("DataLoader worker (pid"):
        return None
    first = text.strip().split(". ")[0].rstrip(" .")  # "... exited unexpectedly with exit code 1. Details are lost..."
    return DataError(f"{first}, and the data pipeline cannot go on without it; if memory ran out, lower "
                     f"data.num_workers, or give the job more memory")
