"""``data.cache_samples``: with a transform that draws nothing at random, every sample is decoded
and resized once and kept; the batches are bit-identical to the uncached ones, and random
transforms are never cached."""

from __future__ import annotations

import torch

from adarem.config import DataConfig
from adarem.data import build_data
from adarem.data.datasets import ImageFolderDataset
from adarem.data.digits import ensure_digits_tree

CPU = torch.device("cpu")


def batches(loader, epoch):
    return [loader.to_device(x, y, CPU, False) for x, y in loader.epoch(epoch)]


def digits(cache: bool, **kw) -> DataConfig:
    kw.setdefault("holdout_fraction", 0.25)
    return DataConfig(name="digits", root=str(ensure_digits_tree()), image_size=16, random_resized_crop=False,
                      hflip=False, in_chans=1, mean=[0.5], std=[0.5], num_workers=0, cache_samples=cache, **kw)


def test_cached_batches_are_bit_identical_and_decoded_once(monkeypatch):
    loads = []
    original = ImageFolderDataset.load
    monkeypatch.setattr(ImageFolderDataset, "load", lambda self, i: (loads.append(i), original(self, i))[1])
    for eval_on in ("val", "holdout"):
        plain = build_data(digits(False, eval_on=eval_on), 64, 0, 1, 3, CPU)
        cached = build_data(digits(True, eval_on=eval_on), 64, 0, 1, 3, CPU)
        for epoch in (0, 1, 2):
            for which in ("train", "val"):
                a, b = batches(getattr(plain, which), epoch), batches(getattr(cached, which), epoch)
                assert len(a) == len(b) > 0
                for (xa, ya), (xb, yb) in zip(a, b):
                    assert torch.equal(xa, xb) and torch.equal(ya, yb)
        loads.clear()
        batches(cached.train, 3)
        batches(cached.val, 3)
        assert loads == []  # nothing decoded again once every sample was seen
        batches(plain.train, 3)
        assert loads  # the uncached loader decodes every epoch


def test_random_transforms_are_never_cached(tmp_path):
    from adarem.data.photo_tree import make_photo_tree

    root = make_photo_tree(tmp_path, classes=2, train_per_class=4, val_per_class=2, size_range=(40, 60))
    cfg = DataConfig(name="folder", root=str(root), image_size=32, val_resize=36, num_workers=0, cache_samples=True)
    bundle = build_data(cfg, 4, 0, 1, 0, CPU)
    assert bundle.train.dataset.cache is None  # random crop and flip: a new draw every epoch
    assert bundle.val.dataset.cache is not None
