"""Datasets and loaders. ``build_data`` is the one entry point the training script uses.

``configs/data/<name>.yaml`` <-> the builders below; ``data.loader=dali`` swaps the torch
DataLoader for the DALI pipeline (adarem/data/dali.py) on every ImageFolder dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from adarem.config import ConfigError, DataConfig
from adarem.data import sampling
from adarem.data import identity
from adarem.data.datasets import (DataError, ImageFolderDataset, Subset, TensorImageDataset, holdout_indices,
                                  holdout_split, list_image_folder)
from adarem.data.loader import SyntheticLoader, TorchLoader
from adarem.data.transforms import build_transforms

__all__ = ["DataBundle", "DataError", "build_data", "data_identity", "imagefolder_root"]


@dataclass
class DataBundle:
    train: object  # a loader, see adarem/data/loader.py
    val: object
    num_classes: int
    in_chans: int
    classes: list[str]
    # what the two sets hold: counts and hashes of the images read (adarem/data/identity.py)
    contents: dict = field(default_factory=dict)


def imagefolder_root(cfg: DataConfig) -> Path:
    if cfg.name == "digits":
        from adarem.data.digits import ensure_digits_tree

        return ensure_digits_tree(Path(cfg.root) if cfg.root else None)
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise DataError(f"data.root={cfg.root!r} is not a directory; point data.root at an ImageFolder "
                        f"tree with train/ and val/ (for ImageNet see scripts/prepare_imagenet.py)")
    return root


def data_identity(cfg: DataConfig, data: DataBundle) -> dict:
    """What makes two runs' data the same dataset: name, resolved root, samples per epoch, class
    names (number and hash) and what each set holds (``train_images``/``val_images``,
    ``train_sha1``/``val_sha1``: adarem/data/identity.py). Stored in run.json; a run directory is
    not continued or reported with other data, and the tables never pool runs whose identities differ."""
    root = str(Path(cfg.root).resolve()) if cfg.root else ""
    classes = hashlib.sha1(json.dumps(list(data.classes)).encode()).hexdigest()[:10]
    return {"name": cfg.name, "root": root, "eval_on": cfg.eval_on, "train_samples": data.train.num_samples,
            "val_samples": data.val.num_samples, "num_classes": data.num_classes, "classes_sha1": classes,
            **data.contents}


def check_classes(classes: list, root: Path) -> None:
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folder(s); classification needs at least 2 "
                        f"(one class folder per label under train/ and val/)")
    hidden = [c for c in classes if c.startswith(".")]
    if hidden:  # torchvision's mapping makes it class 0 and shifts every label (.ipynb_checkpoints, say)
        raise DataError(f"hidden folder {root / hidden[0]} would be a class; remove it (python "
                        f"scripts/prepare_imagenet.py <root> lists every such entry)")


def check_sizes(n_train: int, n_val: int, global_batch: int, world: int) -> None:
    if n_train < global_batch:
        raise ConfigError(f"trainer.batch_size={global_batch} exceeds the {n_train} training samples; lower it")
    if n_val < world:
        raise ConfigError(f"{world} ranks but only {n_val} validation samples: some ranks would have "
                          f"nothing to evaluate; use at most {n_val} processes")


def build_data(cfg: DataConfig, global_batch: int, rank: int, world: int, seed: int,
               device: torch.device, channels_last: bool = False, half: bool = False) -> DataBundle:
    """Loaders for this rank. ``channels_last`` and ``half`` (fp16 AMP) shape the DALI output
    directly; the torch loader's uint8 batches are finished on the device by its ``to_device``
    (called by the engine on every batch)."""
    if global_batch % world:
        raise ConfigError(f"trainer.batch_size={global_batch} is not divisible by the world size {world}; "
                          f"pick a multiple of {world}")
    per_rank = global_batch // world
    if cfg.name == "synthetic":
        shape = (cfg.in_chans, cfg.image_size, cfg.image_size)
        steps = max(1, cfg.synthetic_train_size // global_batch)
        train = SyntheticLoader(steps, per_rank, steps * global_batch, shape, cfg.num_classes, device, seed)
        val_steps = max(1, cfg.synthetic_val_size // global_batch)
        val = SyntheticLoader(val_steps, per_rank, val_steps * global_batch, shape, cfg.num_classes, device, seed + 1)
        return DataBundle(train, val, cfg.num_classes, cfg.in_chans, [str(i) for i in range(cfg.num_classes)],
                          identity.contents(None, None, None, None))  # generated: the configuration says all

    train_tf, val_tf = build_transforms(cfg)
    if cfg.name == "fashion_mnist":
        from adarem.data.fashion_mnist import CLASSES, load_split

        xs, ys = load_split(Path(cfg.root), "train")
        xv, yv = load_split(Path(cfg.root), "test")
        # data.in_chans=3: each greyscale image as 3 equal channels, as an ImageFolder tree's greyscale
        # JPEGs are read (the identity below is of the images as stored)
        train_ds = TensorImageDataset(xs, ys, train_tf, seed, cfg.in_chans)
        val_ds = TensorImageDataset(xv, yv, val_tf, seed, cfg.in_chans)
        if cfg.eval_on == "holdout":
            train_ds, val_ds = holdout_split(train_ds, TensorImageDataset(xs, ys, val_tf, seed, cfg.in_chans),
                                             cfg.holdout_fraction)
            contents = identity.contents(len(train_ds), len(val_ds), identity.tensor_sha1(xs, ys, train_ds.indices),
                                         identity.tensor_sha1(xs, ys, val_ds.indices))
        else:
            contents = identity.contents(len(xs), len(xv), identity.tensor_sha1(xs, ys), identity.tensor_sha1(xv, yv))
        classes = CLASSES
    else:
        root = imagefolder_root(cfg)
        folders: dict = {}  # the two splits share no folder (list_image_folder)
        train_samples, classes = list_image_folder(root / "train", folders)
        check_classes(classes, root / "train")
        val_samples, val_classes = list_image_folder(root / "val", folders)
        check_classes(val_classes, root / "val")
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(classes))[:5]
            raise DataError(f"class folders differ between {root / 'train'} and {root / 'val'} "
                            f"(only in train: {only_train}, only in val: {only_val}); fix the tree so "
                            f"that labels mean the same in both")
        if cfg.loader == "dali" and cfg.eval_on == "holdout":
            raise ConfigError("data.eval_on=holdout is implemented for data.loader=torch only")
        if cfg.eval_on == "holdout":  # both sets are parts of train/ (the split holdout_split makes)
            keep, held = holdout_indices(len(train_samples), cfg.holdout_fraction)
            contents = identity.folder_contents([train_samples[i] for i in keep], [train_samples[i] for i in held],
                                                root)
        else:  # the lists both loaders read
            contents = identity.folder_contents(train_samples, val_samples, root)
        if cfg.loader == "dali":
            from adarem.data.dali import build_dali_loaders

            check_sizes(len(train_samples), len(val_samples), global_batch, world)
            train, val = build_dali_loaders(cfg, train_samples, val_samples, global_batch,
                                            rank, world, seed, device, channels_last, half)
            return DataBundle(train, val, len(classes), cfg.in_chans, classes, contents)
        mode = "L" if cfg.in_chans == 1 else "RGB"
        train_ds = ImageFolderDataset(train_samples, train_tf, seed, cfg.on_corrupt, mode)
        val_ds = ImageFolderDataset(val_samples, val_tf, seed, cfg.on_corrupt, mode, evaluation=True)
        if cfg.eval_on == "holdout":
            train_ds, val_ds = holdout_split(
                train_ds, ImageFolderDataset(train_samples, val_tf, seed, cfg.on_corrupt, mode, evaluation=True),
                cfg.holdout_fraction)
    assert cfg.loader == "torch", cfg.loader  # DataConfig refuses DALI off an ImageFolder tree

    if cfg.cache_samples:
        for ds in (train_ds, val_ds):
            (ds.base if isinstance(ds, Subset) else ds).cache_samples()
    n_train, n_val = len(train_ds), len(val_ds)
    check_sizes(n_train, n_val, global_batch, world)
    steps = n_train // global_batch
    pin = device.type == "cuda"
    common = dict(num_workers=cfg.num_workers, pin_memory=pin, mean=cfg.mean, std=cfg.std)
    train = TorchLoader(
        train_ds, partial(sampling.train_batches, n_train, global_batch, rank, world, seed),
        num_batches=steps, num_samples=steps * global_batch, **common)
    val_plan = sampling.val_batches(n_val, per_rank, rank, world)
    val = TorchLoader(val_ds, lambda epoch, start: val_plan[start:], num_batches=len(val_plan),
                      num_samples=n_val, **common)
    return DataBundle(train, val, len(classes), cfg.in_chans, list(classes), contents)
