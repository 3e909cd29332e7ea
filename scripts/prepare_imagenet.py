"""Check an ImageNet directory, and build val/<wnid>/ from a flat val/ with a label file.

    python scripts/prepare_imagenet.py /datasets/imagenet
    python scripts/prepare_imagenet.py /datasets/imagenet --val-labels LOC_val_solution.csv --out /datasets/imagenet_val_by_class

Expects <root>/train/<wnid>/*.JPEG (1000 classes, 1,281,167 images) and <root>/val/<wnid>/*.JPEG
(50,000 images). Counts what the training loader reads (nested folders included) and reports what
is missing or extra: dangling links, hidden files and folders (macOS '._x.JPEG', .ipynb_checkpoints),
other files, image files that are in both train/ and val/ (a link or hard link: the same file);
exit 0 only when the tree is complete. With --val-labels (Kaggle's
LOC_val_solution.csv, or lines 'filename wnid'), it makes --out/<wnid>/ symlinks to the flat val
images, once every image has one label and every label an image; --out appears only when all links
are made. The originals are never modified, moved or deleted. Then use data.root with a directory
holding train/ (or a link to it) and the new val/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adarem.data.datasets import DataError
from adarem.data.imagenet_layout import EXPECTED, build_val_layout, check_tree


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--val-labels", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="new directory for the per-class val symlinks")
    ap.add_argument("--expect-classes", type=int, default=EXPECTED["classes"])
    ap.add_argument("--expect-train", type=int, default=EXPECTED["train"])
    ap.add_argument("--expect-val", type=int, default=EXPECTED["val"])
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    if args.val_labels:
        if args.out is None:
            print("error: --val-labels needs --out (a new directory for the per-class symlinks)", file=sys.stderr)
            return 2
        try:
            n = build_val_layout(args.root / "val", args.val_labels, args.out)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"linked {n} validation images into {args.out}/<wnid>/ (originals untouched)")
        return 0
    expected = {"classes": args.expect_classes, "train": args.expect_train, "val": args.expect_val}
    try:
        problems, counts = check_tree(args.root, expected)
    except (OSError, DataError) as exc:  # a folder it may not read, a folder reached twice through links
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, c in counts.items():
        print(f"{split}: {c['classes']} classes, {c['images']} images")
    for p in problems:
        print(f"problem: {p}")
    print("complete" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
