"""Small ImageFolder trees of real photographs, for tests and the data-loader benchmark.

scikit-learn ships two real photos (china.jpg, flower.jpg, 427x640). Random crops of them at
ImageNet-like sizes, re-encoded as JPEG, make a tree of real JPEG files of realistic size.
Where scikit-learn is not installed (a minimal GPU image), the two photos are read from the
folder named by ``ADAREM_SAMPLE_PHOTOS`` (``scripts/gpu_check.sh --build-deps`` copies them there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
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


def cached_photo_tree(root: Path, unique_per_class: int | None = None, **kwargs) -> Path:
    """``make_photo_tree(root, **kwargs)`` once: a tree already at ``root`` is reused, a new one is
    made in a private folder beside it and renamed into place when complete (a process killed
    midway leaves no half tree; of two processes making it at once, one tree stays). With
    ``unique_per_class``, only that many training images per class are distinct JPEG files and
    the other training entries are hard links to them (copies where the filesystem has none): the
    same decoding work per image, without generating thousands of files."""
    root = Path(root)
    if root.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    per_class = kwargs.get("train_per_class", 8)
    unique = per_class if unique_per_class is None else max(1, min(per_class, unique_per_class))
    make_photo_tree(tmp, **{**kwargs, "train_per_class": unique})
    for cls in sorted((tmp / "train").iterdir()):
        for i in range(unique, per_class):
            src, dst = cls / f"img_{i % unique:04d}.JPEG", cls / f"img_{i:04d}.JPEG"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    try:
        tmp.rename(root)
    except OSError:  # another process put its (identical) tree there first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
