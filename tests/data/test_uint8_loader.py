"""The torch loader's uint8 path (issue 15, item 5) on real JPEGs: workers return uint8 CHW images,
``to_device`` normalises them like the previous float path did in the workers, and persistent
workers keep the (epoch, start_batch) plan and per-sample augmentation exactly."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from adarem.config import DataConfig
from adarem.data import DataError, build_data
from adarem.data.sampling import sample_seed
from adarem.data.transforms import random_resized_crop_box, val_resize

CPU = torch.device("cpu")


def cfg_for(root, **kw) -> DataConfig:
    kw.setdefault("num_workers", 0)
    return DataConfig(name="folder", root=str(root), image_size=64, val_resize=73, **kw)


def previous_float_transform(cfg: DataConfig, train: bool):
    """The transforms as they were before this change (commit 7d5217c): crop, flip, then float32
    normalisation in the worker."""
    def finish(x):
        return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(cfg.mean), list(cfg.std))

    def train_tf(image, rng):
        x = TF.to_image(image)
        h, w = x.shape[-2:]
        top, left, ch, cw = random_resized_crop_box(h, w, rng)
        x = TF.resized_crop(x, top, left, ch, cw, [cfg.image_size] * 2, interpolation=InterpolationMode.BILINEAR,
                            antialias=True)
        if rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        return finish(x)

    def val_tf(image, rng=None):
        x = TF.to_image(image)
        return finish(TF.center_crop(TF.resize(x, val_resize(cfg), antialias=True), [cfg.image_size] * 2))

    return train_tf if train else val_tf


def passes(loader, epoch, start=0, channels_last=False):
    """Every batch of one pass, finished by the loader's to_device as the engine does."""
    xs, ys = [], []
    for x, y in loader.epoch(epoch, start):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.is_contiguous()
        x, y = loader.to_device(x, y, CPU, channels_last)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batches_finished_on_the_device_equal_the_previous_float_path(tree, split, channels_last):
    cfg = cfg_for(tree)
    data = build_data(cfg, 6, 0, 1, 0, CPU)
    loader = getattr(data, split)
    epoch = 3
    dataset = loader.dataset
    indices = [i for b in loader.plan(epoch, 0) for i in b]
    old = previous_float_transform(cfg, split == "train")
    expected = []
    for i in indices:
        with Image.open(dataset.samples[i][0]) as img:
            expected.append(old(img.convert("RGB"), random.Random(sample_seed(0, epoch, i))))
    expected = torch.stack(expected)
    x, y = passes(loader, epoch, channels_last=channels_last)
    assert x.dtype == torch.float32 and x.shape == expected.shape == (len(indices), 3, 64, 64)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(y, torch.tensor([dataset.samples[i][1] for i in indices]))
    # same operations in the same order: equal up to float rounding (bit-identical on this CPU)
    assert torch.allclose(x, expected, rtol=0, atol=1e-6), float((x - expected).abs().max())


def test_workers_send_uint8_a_quarter_of_the_float_bytes(tree):
    data = build_data(cfg_for(tree, num_workers=2), 6, 0, 1, 0, CPU)
    x, _ = next(iter(data.train.epoch(0)))
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 64, 64)
    finished, _ = data.train.to_device(x, torch.zeros(6, dtype=torch.int64), CPU, False)
    assert x.nbytes * 4 == finished.nbytes
    data.train.close()


def _worker_pids(loader) -> set[int]:
    return {w.pid for dl in loader._idle for w in dl._iterator._workers}


def test_persistent_workers_keep_the_plan_and_the_per_sample_augmentation(tree):
    """One set of workers across epochs, resumes, a pass left early and a nested pass (BN
    recalibration inside a training epoch): every batch equals a fresh single-process loader's."""
    ref = build_data(cfg_for(tree), 6, 0, 1, 0, CPU)
    data = build_data(cfg_for(tree, num_workers=2), 6, 0, 1, 0, CPU)
    train = data.train
    rng_before = torch.get_rng_state()

    def same(epoch, start=0):
        got, want = passes(train, epoch, start), passes(ref.train, epoch, start)
        return torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    assert same(0)
    pids = _worker_pids(train)
    assert len(pids) == 2
    assert same(1) and same(1, start=2) and same(2)
    assert _worker_pids(train) == pids  # the same workers served every epoch

    left = train.epoch(4)  # a pass left after one batch (a stop, or BN recalibration's first batches)
    next(left)
    del left
    assert same(4) and _worker_pids(train) == pids

    outer = train.epoch(5)  # a training epoch, interrupted by a nested pass over the same loader
    first = next(outer)
    nested = passes(train, 5)
    rest = list(outer)
    outer_x = torch.cat([first[0]] + [x for x, _ in rest])
    want = torch.cat([x for x, _ in ref.train.epoch(5)])
    assert torch.equal(outer_x, want) and torch.equal(nested[0], passes(ref.train, 5)[0])
    assert train._kept == 2 and len(train._idle) == 2  # the nested pass got a second kept DataLoader
    assert torch.equal(passes(data.val, 0)[0], passes(ref.val, 0)[0])
    assert torch.equal(passes(data.val, 0)[0], passes(ref.val, 0)[0])
    assert torch.equal(rng_before, torch.get_rng_state())  # the global RNG (dropout's) is never drawn from
    train.close()
    data.val.close()


def test_a_failed_pass_drops_its_workers_and_the_loader_still_works(tree, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    (root / "train" / "class_001" / "img_0002.JPEG").write_bytes(b"not a jpeg" * 50)
    data = build_data(cfg_for(root, num_workers=2), 18, 0, 1, 0, CPU)
    with pytest.raises(DataError, match=r"corrupt image .*img_0002\.JPEG.*data.on_corrupt=skip"):
        list(data.train.epoch(0))
    assert data.train._kept == 0 and not data.train._idle
    assert len(passes(data.val, 0)[1]) == 15
    skip = build_data(cfg_for(root, num_workers=2, on_corrupt="skip"), 18, 0, 1, 0, CPU)
    for epoch in range(2):
        assert len(passes(skip.train, epoch)[1]) == 18
    assert skip.train.corrupt_count == 2 and _worker_pids(skip.train)
    skip.train.close()
    data.val.close()
