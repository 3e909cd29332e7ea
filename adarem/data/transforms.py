"""Train and validation transforms shared by every torch-loader dataset."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from adarem.config import DataConfig


def val_resize(cfg: DataConfig) -> int:
    return cfg.val_resize or round(cfg.image_size / 0.875)


def build_transforms(cfg: DataConfig) -> tuple[v2.Transform, v2.Transform]:
    """(train, val) transforms from a PIL image or uint8 tensor to a normalised float tensor."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
    if cfg.random_resized_crop:
        train = [v2.RandomResizedCrop(cfg.image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
        val = [v2.Resize(val_resize(cfg), antialias=True), v2.CenterCrop(cfg.image_size)]
    else:
        train = [v2.Resize((cfg.image_size, cfg.image_size), antialias=True)]
        val = [v2.Resize((cfg.image_size, cfg.image_size), antialias=True)]
    if cfg.hflip:
        train.append(v2.RandomHorizontalFlip())
    return v2.Compose(train + tail), v2.Compose(val + tail)
