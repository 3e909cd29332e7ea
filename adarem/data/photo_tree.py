"""Small ImageFolder trees of real photographs, for tests and the data-loader benchmark.

scikit-learn ships two real photos (china.jpg, flower.jpg, 427x640). Random crops of them at
ImageNet-like sizes, re-encoded as JPEG, make a tree of real JPEG files of realistic size.
Where scikit-learn is not installed (a minimal GPU image), the two photos are read from the
folder named by ``ADAREM_SAMPLE_PHOTOS`` (``scripts/gpu_check.sh --build-deps`` copies them there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


PHOTOS_ENV = "ADAREM_SAMPLE_PHOTOS"
PHOTO_NAMES = ("china.jpg", "flower.jpg")


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two sample photos as uint8 HxWx3 arrays."""
    folder = os.environ.get(PHOTOS_ENV)
    if folder:
        return [np.asarray(Image.open(Path(folder) / name).convert("RGB")) for name in PHOTO_NAMES]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise RuntimeError(f"the photo tree needs scikit-learn's sample photos: pip install scikit-learn, or set "
                           f"{PHOTOS_ENV} to a folder holding {' and '.join(PHOTO_NAMES)}") from None
    return list(load_sample_images().images)


def make_photo_tree(root: Path, classes: int = 4, train_per_class: int = 8, val_per_class: int = 4,
                    size_range: tuple[int, int] = (300, 500), seed: int = 0, quality: int = 90) -> Path:
    """Write root/{train,val}/class_<k>/img_<i>.JPEG; each image a random crop of a real photo."""
    photos = sample_photos()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            out = root / split / f"class_{k:03d}"
            out.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                photo = photos[(k + i) % len(photos)]
                h_max, w_max = photo.shape[:2]
                w = int(rng.integers(size_range[0], min(size_range[1], w_max) + 1))
                h = int(min(h_max, round(w * rng.uniform(0.6, 0.8))))
                top, left = int(rng.integers(0, h_max - h + 1)), int(rng.integers(0, w_max - w + 1))
                Image.fromarray(photo[top:top + h, left:left + w]).save(out / f"img_{i:04d}.JPEG", quality=quality)
    return root
