"""Check an ImageNet (ILSVRC-2012) directory and build the per-class validation layout.

Nothing here modifies or deletes the original files: the per-class layout is made of symlinks
in a new directory.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from adarem.data.datasets import DataError, TreeError, list_image_folder
from adarem.fsync import staged_directory

EXPECTED = {"classes": 1000, "train": 1_281_167, "val": 50_000}


@dataclass
class SplitReport:
    classes: int = 0
    images: int = 0  # what the training loader will read that is a regular file
    class_names: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    non_images: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)  # links (or other entries) that are no regular file
    hidden: list[str] = field(default_factory=list)  # names starting with '.': class folders, or inside them
    loose: list[str] = field(default_factory=list)  # images directly in the split, outside any class folder
    shared: list[tuple[str, str]] = field(default_factory=list)  # (this split's image, the other split's): one file
    repeated: list[tuple[str, str]] = field(default_factory=list)  # (image, an earlier image of this split): one file


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_split(split_dir: Path, collect: dict | None = None, against: dict | None = None) -> SplitReport:
    """What the training loader will read from ``split_dir``, and what it should not. Each image's
    file (device, inode; links followed) goes into ``collect`` (-> its path), and one that is in
    ``against`` (the other split's) is reported in ``shared``: the same file in train/ and val/."""
    rep = SplitReport()
    own: dict = {}  # this split's files (device, inode) -> path: one file linked into two places
    if not split_dir.is_dir():
        return rep
    # The images are the loader's own listing (list_image_folder), so that the counts are what a
    # run reads: nested folders included, and also the macOS '._x.JPEG' files and hidden folders
    # (which become classes), which are therefore reported below.
    try:
        samples, classes = list_image_folder(split_dir, empty_classes_ok=True)
    except TreeError:  # a link cycle, a folder it may not list: nothing below could be counted
        raise
    except DataError:  # no class folders, or none with an image: still report what is there
        samples = []
        try:
            classes, _ = find_classes(str(split_dir))
        except FileNotFoundError:
            classes = []
    rep.classes, rep.class_names = len(classes), classes
    per_class = [0] * len(classes)
    for path, label in samples:
        try:
            st = os.stat(path)  # follows links: a link whose original moved away is not an image
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            rep.dangling.append(os.path.relpath(path, split_dir))
            continue
        per_class[label] += 1
        key, rel = (st.st_dev, st.st_ino), os.path.join(split_dir.name, os.path.relpath(path, split_dir))
        if st.st_ino and own.setdefault(key, rel) != rel:  # (no inode numbers on this file system: not compared)
            rep.repeated.append((rel, own[key]))
        if collect is not None:
            collect.setdefault(key, rel)
        if against and key in against:
            rep.shared.append((rel, against[key]))
    rep.images = sum(per_class)
    rep.empty_classes = [c for c, n in zip(classes, per_class) if n == 0]
    # The same walk as the loader's, for what it reads but should not (hidden entries) and what it
    # skips (other files, and images outside the class folders).
    for cls in classes:
        if cls.startswith("."):
            rep.hidden.append(cls)
        for dirpath, dirs, files in os.walk(split_dir / cls, followlinks=True):
            rel_dir = os.path.relpath(dirpath, split_dir)
            for name in sorted(dirs + files):
                if name.startswith("."):
                    rep.hidden.append(os.path.join(rel_dir, name))
            rep.non_images += [os.path.join(rel_dir, f) for f in sorted(files)
                               if not f.startswith(".") and not _is_image(f)]
    for entry in os.scandir(split_dir):
        if entry.is_symlink() and not os.path.exists(entry.path):
            rep.dangling.append(entry.name)  # a class folder whose link dangles is no class at all
        elif entry.is_file() and _is_image(entry.name):
            rep.loose.append(entry.name)
    return rep


def _examples(names: list[str], n: int = 1) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_tree(root: Path, expected: dict = EXPECTED) -> tuple[list[str], dict]:
    """Problems (human-readable lines; empty means the tree is complete) and the counts."""
    problems, counts, class_names = [], {}, {}
    val_files: dict = {}  # the val images' files (50,000), against which train/'s are checked
    reports = {"val": scan_split(root / "val", collect=val_files)}
    reports["train"] = scan_split(root / "train", against=val_files)
    for split in ("train", "val"):
        rep = reports[split]
        counts[split] = {"classes": rep.classes, "images": rep.images}
        class_names[split] = set(rep.class_names)
        if not (root / split).is_dir():
            problems.append(f"{root / split} is missing")
            continue
        if rep.loose and all(c.startswith(".") for c in rep.class_names):  # none, or only hidden ones
            problems.append(f"{root / split} is flat (images without class folders): build the layout "
                            f"with --val-labels")
            continue
        if rep.classes != expected["classes"]:
            problems.append(f"{split}: {rep.classes} class folders, expected {expected['classes']}")
        if rep.images != expected[split]:
            diff = rep.images - expected[split]
            problems.append(f"{split}: {rep.images} images, expected {expected[split]} "
                            f"({'+' if diff > 0 else ''}{diff})")
        if rep.dangling:
            problems.append(f"{split}: {len(rep.dangling)} dangling link(s), not counted (e.g. "
                            f"{rep.dangling[0]}): restore the originals they point to, or build the "
                            f"layout again with --val-labels")
        if rep.hidden:
            problems.append(f"{split}: {len(rep.hidden)} hidden file(s)/folder(s) (e.g. "
                            f"{_examples(rep.hidden, 3)}): delete them; the loader takes a hidden folder "
                            f"in {split}/ for a class, and reads hidden images such as macOS '._' files")
        if rep.loose:
            problems.append(f"{split}: {len(rep.loose)} image(s) outside the class folders, which the "
                            f"loader skips (e.g. {rep.loose[0]}): move them into their class folder")
        if rep.shared:
            a, b = rep.shared[0]
            problems.append(f"{split}: {len(rep.shared)} image(s) are val images too, the same file (e.g. {a} is "
                            f"{b}): a model would be evaluated on images it trained on; remove them from one split")
        if rep.repeated:
            a, b = rep.repeated[0]
            problems.append(f"{split}: {len(rep.repeated)} image(s) are another image of {split}/ too, the same file "
                            f"(e.g. {a} is {b}): read twice, under two labels if in two classes; keep one")
        problems += [f"{split}: class {c} has no images" for c in rep.empty_classes[:20]]
        problems += [f"{split}: not an image: {f}" for f in rep.non_images[:20]]
    train, val = class_names["train"], class_names["val"]
    if train and val and train != val:
        problems.append(f"class folders differ: only in train {sorted(train - val)[:5]}, "
                        f"only in val {sorted(val - train)[:5]}")
    return problems, counts


def read_val_labels(path: Path) -> dict[str, str]:
    """image file stem -> wnid, from LOC_val_solution.csv (Kaggle) or 'filename wnid' lines.

    An image listed twice with the same class is accepted; with two classes it is an error, since
    either could be the wrong one.
    """
    labels: dict[str, str] = {}

    def add(where: str, name: str, wnid: str) -> None:
        stem = Path(name).stem
        if labels.setdefault(stem, wnid) != wnid:
            raise ValueError(f"{where}: {name} is labelled both {labels[stem]} and {wnid}; fix the labels "
                             f"file so that each image has one class")

    with open(path) as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{path}: expected the header 'ImageId,PredictionString' of Kaggle's "
                                 f"LOC_val_solution.csv, got {reader.fieldnames}")
            for row in reader:
                wnid = (row["PredictionString"] or "").split()[:1]
                if not row["ImageId"] or not wnid:
                    raise ValueError(f"{path}:{reader.line_num}: expected 'ImageId,wnid ...', got "
                                     f"{row['ImageId']!r},{row['PredictionString']!r}")
                add(f"{path}:{reader.line_num}", row["ImageId"], wnid[0])
        else:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}:{n}: expected 'filename wnid', got {line.strip()!r}")
                add(f"{path}:{n}", *parts)
    if not labels:
        raise ValueError(f"{path} holds no labels; pass LOC_val_solution.csv or a file of 'filename wnid' lines")
    return labels


def build_val_layout(flat_val: Path, labels_file: Path, out: Path) -> int:
    """out/<wnid>/<file> symlinks to every image of flat_val; returns how many were linked.

    Every image must have a label and every label an image, and out/ appears only once complete
    (see below): a later check never takes a partial layout for the validation set.
    """
    labels = read_val_labels(labels_file)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty or not a directory; pass a new directory")
    if not flat_val.is_dir():
        raise FileNotFoundError(f"{flat_val} is not a directory; extract the validation images there")
    images = sorted(p for p in flat_val.iterdir() if p.is_file() and _is_image(p.name))
    if not images:
        raise ValueError(f"{flat_val} holds no images directly; extract the validation images there (if it "
                         f"is already per-class, check it without --val-labels)")
    unlabelled = [p.name for p in images if p.stem not in labels]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} images in {flat_val} have no label in {labels_file} (e.g. "
                         f"{_examples(unlabelled, 3)}); pass the labels of these images, or remove strays")
    # p.is_file() above follows links, so a dangling link counts as a missing image here
    missing = sorted(labels.keys() - {p.stem for p in images})
    if missing:
        raise ValueError(f"{len(missing)} of the {len(labels)} images labelled in {labels_file} are missing "
                         f"from {flat_val} (e.g. {missing[0]}); finish extracting the validation images "
                         f"and run again")
    # The links are made in a hidden sibling directory (a staging folder: adarem.fsync) that is
    # renamed to out/ once all are made, so that a run stopped half-way (disk full, Ctrl-C) leaves
    # no out/ that looks complete, and one killed half-way (kill -9) leaves a staging folder that
    # the next run into out/ removes. It holds only links and folders made here (and its writer's
    # marker), and removing it removes links, never what they point to: it touches no original.
    with staged_directory(out) as partial:
        for p in images:
            d = partial / labels[p.stem]
            d.mkdir(exist_ok=True)
            (d / p.name).symlink_to(p.resolve())
    return len(images)
