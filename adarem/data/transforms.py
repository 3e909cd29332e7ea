"""Train and validation transforms shared by every torch-loader dataset, and the normalisation
that finishes their batches on the device.

The transforms return uint8 CHW images (decode, crop, resize and flip only): a batch crosses the
worker queue and the host-to-device copy at a quarter of float32's bytes, and ``normalize``
(called by ``TorchLoader.to_device`` on the training device) converts and normalises it with the
same operations, in the same order, as torchvision's ``to_dtype(scale=True)`` + ``normalize``
did in the workers before, so the result is the same up to float rounding (bit-identical on CPU).

The random decisions (crop box, flip) are drawn from a ``random.Random`` seeded per sample, not
from torch's global RNG: a sample's augmentation is then a pure function of (seed, epoch,
index), independent of workers, ranks and resumption, and the training loop's own RNG stream
(dropout) is never touched. The crop distribution is torchvision's RandomResizedCrop.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from adarem.config import DataConfig, resize_for_crop

Transform = Callable[[object, random.Random], torch.Tensor]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images [..., C, H, W] -> float32 ``(x / 255 - mean) / std``; ``mean`` and ``std`` are
    float32 tensors of shape [C, 1, 1] on x's device. The memory format (channels_last) is kept."""
    return x.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


def val_resize(cfg: DataConfig) -> int:
    return cfg.val_resize or resize_for_crop(cfg.image_size)


def random_resized_crop_box(height: int, width: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision's RandomResizedCrop distribution and fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: the central crop of the largest allowed aspect ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    def __init__(self, cfg: DataConfig):
        self.size, self.rrc, self.hflip = cfg.image_size, cfg.random_resized_crop, cfg.hflip
        self.deterministic = not (self.rrc or self.hflip)  # the same output for every (seed, epoch)

    def __call__(self, image, rng: random.Random) -> torch.Tensor:
        x = TF.to_image(image)  # uint8 CHW tensor
        h, w = x.shape[-2:]
        if self.rrc:
            top, left, ch, cw = random_resized_crop_box(h, w, rng)
            x = TF.resized_crop(x, top, left, ch, cw, [self.size, self.size],
                                interpolation=InterpolationMode.BILINEAR, antialias=True)
        elif (h, w) != (self.size, self.size):
            x = TF.resize(x, [self.size, self.size], antialias=True)
        if self.hflip and rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        return x


class ValTransform:
    """Resize the shorter side to val_resize, centre-crop image_size (or a plain resize)."""

    deterministic = True  # draws nothing at random

    def __init__(self, cfg: DataConfig):
        self.size, self.rrc, self.resize = cfg.image_size, cfg.random_resized_crop, val_resize(cfg)

    def __call__(self, image, rng: random.Random | None = None) -> torch.Tensor:
        x = TF.to_image(image)
        if self.rrc:
            x = TF.center_crop(TF.resize(x, self.resize, antialias=True), [self.size, self.size])
        elif tuple(x.shape[-2:]) != (self.size, self.size):
            x = TF.resize(x, [self.size, self.size], antialias=True)
        return x


def build_transforms(cfg: DataConfig) -> tuple[Transform, Transform]:
    """(train, val) transforms: ``transform(PIL image or uint8 tensor, rng) -> uint8 CHW tensor``."""
    return TrainTransform(cfg), ValTransform(cfg)
