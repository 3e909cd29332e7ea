"""What identifies the images a run reads, cheaply: the content part of ``data_identity``.

run.json records it; a relaunch or resume of a run directory whose data no longer match is
refused (adarem/run_setup.py: check_data_identity), and the tables never pool runs whose
identities differ. For each of the two sets a run reads (what it trains on, what it evaluates on;
with ``data.eval_on=holdout`` both are parts of train/):

- ``train_images`` / ``val_images``: how many images the set holds (files of an ImageFolder
  tree, images of Fashion-MNIST's IDX files), not the samples per epoch;
- ``train_sha1`` / ``val_sha1``: for an ImageFolder tree (folder, imagenet, digits), a SHA-1 of
  the sample list the loaders read, one ``<path relative to the data root>\\t<class index>`` line
  per image in the loaders' index order (which the sample plan turns into batches). The torch and
  DALI loaders read the same list, and the list is what the loaders make anyway, so this costs no
  file access: moving, renaming, adding or removing images or relabelling a class folder changes
  it; rewriting an image's bytes under the same name does not (reading or stat'ing 1.28 M ImageNet
  files at every launch would be the price of that). For Fashion-MNIST, a SHA-1 of the images and
  labels as loaded (the loader holds them in memory: ~0.1 s).

Synthetic data: all four null (generated from the configuration and seed alone).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch


def file_list_sha1(samples: Sequence[tuple[str, int]], root: Path) -> str:
    """SHA-1 (16 hex digits) of ``samples`` (path, class index) with paths relative to ``root``."""
    prefix = os.path.join(str(root), "")  # "<root>/", or "" for "."
    if prefix in ("./", "." + os.sep):
        prefix = ""
    n = len(prefix)
    text = "".join([f"{p[n:] if p.startswith(prefix) else p}\t{c}\n" for p, c in samples])
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def tensor_sha1(images: torch.Tensor, labels: torch.Tensor, indices: Optional[list[int]] = None) -> str:
    """SHA-1 (16 hex digits) of uint8 images [N, ...] and their labels, or of the rows ``indices``."""
    if indices is not None:
        images, labels = images[indices], labels[indices]
    h = hashlib.sha1(repr((tuple(images.shape), str(images.dtype), str(labels.dtype))).encode())
    h.update(images.contiguous().numpy().data)
    h.update(labels.contiguous().numpy().data)
    return h.hexdigest()[:16]


def contents(train_images: int, val_images: int, train_sha1: Optional[str], val_sha1: Optional[str]) -> dict:
    return {"train_images": train_images, "val_images": val_images, "train_sha1": train_sha1, "val_sha1": val_sha1}


def folder_contents(train: Sequence[tuple[str, int]], val: Sequence[tuple[str, int]], root: Path) -> dict:
    return contents(len(train), len(val), file_list_sha1(train, root), file_list_sha1(val, root))
