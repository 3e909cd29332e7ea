"""Small ImageFolder trees of real photographs, for tests and the data-loader benchmark.

scikit-learn ships two real photos (china.jpg, flower.jpg, 427x640). Random crops of them at
ImageNet-like sizes, re-encoded as JPEG, make a tree of real JPEG files of realistic size.
Where scikit-learn is not installed (a minimal GPU image), the two photos are read from the
folder named by ``ADAREM_SAMPLE_PHOTOS`` (``scripts/gpu_check.sh --build-deps`` copies them there).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


PHOTOS_ENV = "ADAREM_SAMPLE_PHOTOS"
PHOTO_NAMES = ("china.jpg", "flower.jpg")
MANIFEST = "photo_tree.json"  # a cached tree's parameters, beside train/ and val/


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


def photo_tree_params(unique_per_class: int | None = None, **kwargs) -> dict:
    """Every parameter that decides a cached tree's files (``make_photo_tree``'s, defaults filled
    in, and the distinct files per class), as its manifest records them."""
    defaults = {k: v.default for k, v in inspect.signature(make_photo_tree).parameters.items() if k != "root"}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"cached_photo_tree: unknown parameter(s) {sorted(unknown)}")
    params = {**defaults, **kwargs}
    params["size_range"] = list(params["size_range"])
    per_class = params["train_per_class"]
    params["unique_per_class"] = per_class if unique_per_class is None else max(1, min(per_class, unique_per_class))
    params["photos"] = list(PHOTO_NAMES)
    return params


def cached_photo_tree(root: Path, unique_per_class: int | None = None, **kwargs) -> Path:
    """``make_photo_tree(root, **kwargs)`` once: a tree already at ``root`` is reused only if its
    manifest (``photo_tree.json``) records the same parameters (sizes, size range, seed, quality,
    distinct files); a tree made with others, or with no manifest, is refused (ValueError naming
    the differences; give another root or remove it), never silently measured instead. A new one is
    made in a private folder beside it and renamed into place when complete (a process killed
    midway leaves no half tree; of two processes making it at once, one tree stays). With
    ``unique_per_class``, only that many training images per class are distinct JPEG files and
    the other training entries are hard links to them (copies where the filesystem has none): the
    same decoding work per image, without generating thousands of files."""
    root = Path(root)
    params = photo_tree_params(unique_per_class, **kwargs)
    if root.exists():
        _check_manifest(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    per_class, unique = params["train_per_class"], params["unique_per_class"]
    make_photo_tree(tmp, **{**kwargs, "train_per_class": unique})
    for cls in sorted((tmp / "train").iterdir()):
        for i in range(unique, per_class):
            src, dst = cls / f"img_{i % unique:04d}.JPEG", cls / f"img_{i:04d}.JPEG"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    (tmp / MANIFEST).write_text(json.dumps(params, indent=1) + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another process put its tree there first: used if it has these parameters
        shutil.rmtree(tmp, ignore_errors=True)
        _check_manifest(root, params)
    return root


def _check_manifest(root: Path, params: dict) -> None:
    try:
        have = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ValueError(f"{root} exists but has no readable {MANIFEST} (made by an older version or not by "
                         f"cached_photo_tree): its size range, seed and quality are unknown; remove it or give "
                         f"another root") from None
    diff = {k: (have.get(k), v) for k, v in params.items() if have.get(k) != v}
    if diff:
        raise ValueError(f"{root} holds a photo tree made with other parameters (" + ", ".join(
            f"{k} {a!r}, asked {b!r}" for k, (a, b) in diff.items()) + "); remove it or give another root")
