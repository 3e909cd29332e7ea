"""Forked loader workers and the garbage of the process that forks them.

The flake of tests/data/test_image_modes.py (a later DALI worker pool failed to start, 'Workers
initialization failed' or 'Worker data receiving interrupted', about one full run in 4 to 7): a
failed loader's DALI pipeline, kept in a reference cycle by its traceback (pytest.raises), was
still uncollected garbage when the next pool forked its workers; a worker's own garbage collector
then collected its copy, and Pipeline.__del__ ran DALI's backend Shutdown() in the forked worker,
which has none of the backend's threads: a segmentation fault, the pool's start failed (or hung).
The same path exists outside tests: compare.py runs its trials in one process.

Here a collection is forced in every forked child (os.register_at_fork), so what was a matter of
chance is certain."""

from __future__ import annotations

import gc
import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from adarem.config import DataConfig
from adarem.data import DataError, build_data

CPU = torch.device("cpu")
_COLLECT_IN_CHILD = False
_HOOKED = False


def _collect_in_child() -> None:
    if _COLLECT_IN_CHILD:
        gc.collect()


@pytest.fixture
def collect_in_forked_children():
    """Automatic collection off in this process (its garbage stays until the fork), a full
    collection in every child forked meanwhile; restored after."""
    global _COLLECT_IN_CHILD, _HOOKED
    if not _HOOKED:
        os.register_at_fork(after_in_child=_collect_in_child)  # cannot be unregistered: inert when off
        _HOOKED = True
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    _COLLECT_IN_CHILD = True
    try:
        yield
    finally:
        _COLLECT_IN_CHILD = False
        if enabled:
            gc.enable()
        gc.collect()


class _Marker:
    """Garbage that says in which process it was collected."""

    def __init__(self, path):
        self.path, self.cycle = path, self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def _tree(root, refused: bool):
    """2 classes x 2 PNGs in train/ and val/; with ``refused``, val/a also holds a 32-bit TIFF,
    which the loaders refuse (DataError raised from the DALI worker)."""
    grey = np.linspace(0, 255, 12 * 10).reshape(10, 12).astype(np.uint8)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.roll(grey, 7 * i)).save(root / split / c / f"{i}.png")
    if refused:
        Image.fromarray(grey.astype(np.int32) * 65793).save(root / "val" / "a" / "2.tif")
    return root


def _data(root, loader="dali", workers=1):
    cfg = DataConfig(name="folder", root=str(root), image_size=8, val_resize=8, num_workers=workers, loader=loader,
                     in_chans=3, on_corrupt="skip")
    return build_data(cfg, 2, 0, 1, 0, CPU)


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def test_a_failed_dali_loaders_workers_end_with_its_failure(tmp_path):
    """Before: the failed pipeline, referenced by the traceback the caller holds, kept its worker
    process until that traceback was collected."""
    pytest.importorskip("nvidia.dali")
    data = _data(_tree(tmp_path, refused=True))
    before = _children()
    with pytest.raises(DataError, match="32-bit") as err:
        list(data.val.epoch(0))
    assert err.value.__traceback__ is not None  # held: the failed pass's frame with it
    assert not _children() - before


def test_a_forked_dali_worker_does_not_collect_this_process_garbage(tmp_path, collect_in_forked_children):
    """Garbage left by a failed trial (a failed loader, and a loader with a kept pipeline, both in
    reference cycles) when the next loader forks its workers. Before: the worker collected its copy
    of them, and crashed on the kept pipeline's Shutdown() ('Workers initialization failed')."""
    pytest.importorskip("nvidia.dali")
    marker = tmp_path / "collected_in"
    failed = _data(_tree(tmp_path / "bad", refused=True))
    with pytest.raises(DataError, match="32-bit") as err:  # ExceptionInfo and traceback: a reference cycle
        list(failed.val.epoch(0))
    err.value.cycle = err
    kept = _data(_tree(tmp_path / "good", refused=False))
    assert sum(1 for _ in kept.val.epoch(0)) == 2  # its pipeline is kept, workers alive
    kept.cycle = kept
    _Marker(marker)
    del failed, kept, err
    data = _data(tmp_path / "good")
    labels = torch.cat([y for _, y in data.val.epoch(0)])
    assert labels.tolist() == [0, 0, 1, 1]
    collected_in = set(marker.read_text().split()) if marker.exists() else set()
    assert collected_in <= {str(os.getpid())}, "garbage collected in a forked worker"


def test_a_forked_dataloader_worker_does_not_collect_this_process_garbage(tmp_path, collect_in_forked_children):
    """The torch loader's DataLoader workers fork too (a DALI pipeline collected there would crash
    them the same way)."""
    marker = tmp_path / "collected_in"
    _Marker(marker)
    data = _data(_tree(tmp_path / "good", refused=False), loader="torch")
    labels = torch.cat([y for _, y in data.val.epoch(0)])
    assert labels.tolist() == [0, 0, 1, 1]
    collected_in = set(marker.read_text().split()) if marker.exists() else set()
    assert collected_in <= {str(os.getpid())}, "garbage collected in a forked worker"
