"""Fashion-MNIST from its gz IDX files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from adarem.data.datasets import DataError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt
        raise DataError(f"{path} cannot be read as a gz file ({type(exc).__name__}: {exc}); download or install "
                        f"it again ('sudo apt-get install --reinstall dataset-fashion-mnist')") from None
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4]) if len(data) >= 4 else (-1, 0, 0)
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file; download or install it again")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28] and int64 labels of 'train' or 'test'."""
    img_name, lbl_name = FILES[split]
    for name in (img_name, lbl_name):
        if not (root / name).is_file():
            raise DataError(f"Fashion-MNIST file {root / name} not found; install it with "
                            f"'sudo apt-get install dataset-fashion-mnist' or set data.root to a "
                            f"directory holding the four *-ubyte.gz files")
    images = torch.from_numpy(read_idx(root / img_name).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(root / lbl_name).astype(np.int64))
    if images.dim() != 4 or labels.dim() != 1:
        raise DataError(f"Fashion-MNIST {split}: {root / img_name} holds shape {tuple(images.shape[:1] + images.shape[2:])} "
                        f"and {root / lbl_name} {tuple(labels.shape)}, expected N x 28 x 28 images and N labels; "
                        f"check that these are the Fashion-MNIST files")
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise DataError(f"Fashion-MNIST {split}: {root / lbl_name} holds label {int(labels.max())}, but there are "
                        f"{len(CLASSES)} classes (0-{len(CLASSES) - 1}); check that it is the Fashion-MNIST labels file")
    return images, labels
