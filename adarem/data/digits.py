"""scikit-learn's digits as an ImageFolder tree of real JPEG files, written once into a cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_VERSION = "v1"  # bump when the written tree changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADAREM_CACHE", Path.home() / ".cache" / "adarem"))


def ensure_digits_tree(root: Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write ``<root>/train/<digit>/*.jpg`` and ``<root>/val/<digit>/*.jpg`` unless present.

    Written into a temporary directory and renamed into place, so that concurrent ranks or runs
    never see a half-written tree. The split is stratified and fixed (seed 0).
    """
    root = Path(root) if root else default_cache_dir() / f"digits_{DIGITS_VERSION}"
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    from sklearn.datasets import load_digits  # 1.6 s to import: only when the tree is written

    root.parent.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    try:
        for digit in range(10):
            idx = np.flatnonzero(labels == digit)
            rng.shuffle(idx)
            n_val = int(round(len(idx) * val_fraction))
            for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
                out = tmp / split / str(digit)
                out.mkdir(parents=True)
                for i in chosen:
                    pixels = (images[i].reshape(8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
                    Image.fromarray(pixels, mode="L").save(out / f"{i:04d}.jpg", quality=95)
        try:
            tmp.rename(root)
        except OSError:  # another process won the race; its tree is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
