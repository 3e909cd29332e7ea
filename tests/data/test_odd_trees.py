"""ImageFolder trees with symbolic links: no image is a sample twice, no val folder is a train folder."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from adarem.config import DataConfig
from adarem.data import DataError, build_data
from tests.data.test_prepare_imagenet import run

CPU = torch.device("cpu")


def small_tree(root):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 10), (40 * i, 80, 120)).save(root / split / c / f"{i}.jpg")
    return root


def build(root):
    cfg = DataConfig(name="folder", root=str(root), image_size=8, val_resize=9, num_workers=0)
    return build_data(cfg, 2, 0, 1, 0, CPU)


def test_a_plain_tree_reads_each_image_once(tmp_path):
    data = build(small_tree(tmp_path))
    assert data.contents["train_images"] == data.contents["val_images"] == 4


@pytest.mark.parametrize("link, target", [
    ("train/a/up", ".."),  # a cycle: every image of the split again, as class a, 40 levels deep
    ("train/a/also_b", "../b"),  # class b's images labelled a as well
])
def test_a_folder_reached_twice_through_a_link_is_refused(tmp_path, link, target):
    root = small_tree(tmp_path)
    os.symlink(target, root / link)
    with pytest.raises(DataError, match=r"are the same folder \(reached through a symbolic link\).*remove the link") as exc:
        build(root)
    assert str(root / link) in str(exc.value)


def test_a_val_class_folder_linked_to_train_is_refused(tmp_path):
    root = small_tree(tmp_path)
    for c in ("a", "b"):  # val/ is train/ under another name: the error would be a training error
        for f in (root / "val" / c).iterdir():
            f.unlink()
        (root / "val" / c).rmdir()
        os.symlink(root / "train" / c, root / "val" / c)
    with pytest.raises(DataError, match=r"train/a and .*val/a are the same folder"):
        build(root)


def test_prepare_imagenet_names_a_link_cycle_in_one_line(tmp_path):
    root = small_tree(tmp_path)
    os.symlink("..", root / "train" / "a" / "up")
    result = run(root, "--expect-classes", 2, "--expect-train", 4, "--expect-val", 4)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "train/a/up" in result.stderr and "same folder" in result.stderr, result.stderr
