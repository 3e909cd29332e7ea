"""Check an ImageNet (ILSVRC-2012) directory and build the per-class validation layout.

Nothing here modifies or deletes the original files: the per-class layout is made of symlinks
in a new directory.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

EXPECTED = {"classes": 1000, "train": 1_281_167, "val": 50_000}


@dataclass
class SplitReport:
    classes: int = 0
    images: int = 0
    empty_classes: list[str] = field(default_factory=list)
    non_images: list[str] = field(default_factory=list)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_split(split_dir: Path) -> SplitReport:
    rep = SplitReport()
    if not split_dir.is_dir():
        return rep
    for cls in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        rep.classes += 1
        n = 0
        for f in os.scandir(cls):
            if _is_image(f.name):
                n += 1
            elif f.is_file():
                rep.non_images.append(str(Path(cls.name) / f.name))
        rep.images += n
        if n == 0:
            rep.empty_classes.append(cls.name)
    return rep


def check_tree(root: Path, expected: dict = EXPECTED) -> tuple[list[str], dict]:
    """Problems (human-readable lines; empty means the tree is complete) and the counts."""
    problems, counts = [], {}
    for split in ("train", "val"):
        rep = scan_split(root / split)
        counts[split] = {"classes": rep.classes, "images": rep.images}
        if not (root / split).is_dir():
            problems.append(f"{root / split} is missing")
            continue
        if rep.classes == 0 and any(_is_image(f.name) for f in os.scandir(root / split)):
            problems.append(f"{root / split} is flat (images without class folders): build the layout "
                            f"with --val-labels")
            continue
        if rep.classes != expected["classes"]:
            problems.append(f"{split}: {rep.classes} class folders, expected {expected['classes']}")
        if rep.images != expected[split]:
            diff = rep.images - expected[split]
            problems.append(f"{split}: {rep.images} images, expected {expected[split]} "
                            f"({'+' if diff > 0 else ''}{diff})")
        problems += [f"{split}: class {c} has no images" for c in rep.empty_classes[:20]]
        problems += [f"{split}: not an image: {f}" for f in rep.non_images[:20]]
    train_classes = {p.name for p in (root / "train").iterdir() if p.is_dir()} if (root / "train").is_dir() else set()
    val_classes = {p.name for p in (root / "val").iterdir() if p.is_dir()} if (root / "val").is_dir() else set()
    if train_classes and val_classes and train_classes != val_classes:
        problems.append(f"class folders differ: only in train {sorted(train_classes - val_classes)[:5]}, "
                        f"only in val {sorted(val_classes - train_classes)[:5]}")
    return problems, counts


def read_val_labels(path: Path) -> dict[str, str]:
    """image file stem -> wnid, from LOC_val_solution.csv (Kaggle) or 'filename wnid' lines."""
    labels = {}
    with open(path) as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                labels[Path(row["ImageId"]).stem] = row["PredictionString"].split()[0]
        else:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}:{n}: expected 'filename wnid', got {line.strip()!r}")
                labels[Path(parts[0]).stem] = parts[1]
    return labels


def build_val_layout(flat_val: Path, labels_file: Path, out: Path) -> int:
    """out/<wnid>/<file> symlinks to every image of flat_val; returns how many were linked."""
    labels = read_val_labels(labels_file)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass a new directory")
    images = sorted(p for p in flat_val.iterdir() if p.is_file() and _is_image(p.name))
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise ValueError(f"{len(missing)} images have no label in {labels_file} (e.g. {missing[:3]})")
    for p in images:
        d = out / labels[p.stem]
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name).symlink_to(p.resolve())
    return len(images)
