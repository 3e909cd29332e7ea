"""ImageFolder trees with symbolic links: no image is a sample twice, no val folder is a train folder."""

from __future__ import annotations

import os

import numpy as np
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


def _gradient_tree(root, sixteen_bits: bool):
    """train/ and val/ of 2 classes x 2 greyscale PNGs: 16-bit, or the same image in 8 bits."""
    ramp = np.linspace(0, 65535, 24 * 20).reshape(20, 24).astype(np.uint16)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                wide = (ramp // (i + 1)).astype(np.uint16)
                eight = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
                Image.fromarray(wide if sixteen_bits else eight).save(root / split / c / f"{i}.png")
    return root


def _val_images(data):
    loader = data.val
    out = [loader.to_device(x, y, CPU, False)[0] if hasattr(loader, "to_device") else x for x, y in loader.epoch(0)]
    return torch.cat(out)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    wide = _gradient_tree(tmp_path / "wide", True)
    assert Image.open(next((wide / "val" / "a").iterdir())).mode.startswith("I;16")  # what PIL makes of it
    x16 = _val_images(build(wide))
    x8 = _val_images(build(_gradient_tree(tmp_path / "eight", False)))
    # PIL's convert clips at 255: all but the darkest pixels were white (1.0 after mean/std 0.5)
    assert torch.equal(x16, x8), float((x16 - x8).abs().max())
    pytest.importorskip("nvidia.dali")  # and DALI's decoder agrees
    cfg = DataConfig(name="folder", root=str(wide), image_size=8, val_resize=9, num_workers=0, loader="dali")
    xd = _val_images(build_data(cfg, 2, 0, 1, 0, CPU))
    assert float((xd - x16).abs().max()) < 0.05  # resampling: a grey level or two (clipped: > 1)


@pytest.mark.parametrize("on_corrupt", ["error", "skip"])
def test_an_image_over_pils_size_limit_is_one_line_naming_it_never_replaced(tmp_path, monkeypatch, on_corrupt):
    root = small_tree(tmp_path)
    Image.new("RGB", (60, 50), (10, 20, 30)).save(root / "train" / "b" / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 60 x 50 > 2 x 1000: PIL's DecompressionBombError
    cfg = DataConfig(name="folder", root=str(root), image_size=8, val_resize=9, num_workers=0, on_corrupt=on_corrupt)
    data = build_data(cfg, 5, 0, 1, 0, CPU)
    with pytest.raises(DataError, match=rf"image {root / 'train' / 'b' / 'big.jpg'} is too large for PIL.*downscale it"):
        for _ in data.train.epoch(0):
            pass
    # DALI's reader takes it for the image it is (its decoder has no such limit)
    from adarem.data.dali import pil_decodes
    assert pil_decodes((root / "train" / "b" / "big.jpg").read_bytes())


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_prepare_imagenet_reports_an_image_file_in_both_train_and_val(tmp_path, how):
    root = small_tree(tmp_path)
    expect = ("--expect-classes", 2, "--expect-train", 4, "--expect-val", 4)
    assert run(root, *expect).returncode == 0
    shared = root / "val" / "b" / "1.jpg"
    shared.unlink()  # val/b/1.jpg becomes train/a/0.jpg: the same counts, one val image a training image
    (shared.symlink_to if how == "symlink" else shared.hardlink_to)(root / "train" / "a" / "0.jpg")
    res = run(root, *expect)
    assert res.returncode == 1, res.stdout
    lines = [line for line in res.stdout.splitlines() if "val images too" in line]
    assert len(lines) == 1 and "train/a/0.jpg is val/b/1.jpg" in lines[0], res.stdout


def test_a_folder_that_cannot_be_listed_is_named_not_skipped(tmp_path, monkeypatch):
    root = small_tree(tmp_path)
    (root / "val" / "b" / "more").mkdir()
    Image.new("RGB", (12, 10)).save(root / "val" / "b" / "more" / "2.jpg")
    real = os.scandir
    locked = str(root / "val" / "b" / "more")

    def scandir(path="."):  # as for a folder without read permission (the tests may run as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=rf"cannot list the folder {locked} \(Permission denied\).*make it readable"):
        build(root)  # os.walk skipped it: val/b lost an image without a word
    res = run(root, "--expect-classes", 2, "--expect-train", 4, "--expect-val", 5)
    assert res.returncode == 2 and res.stderr.startswith(f"error: cannot list the folder {locked}"), res


@pytest.mark.parametrize("split, never", [("val", "evaluated"), ("train", "seen")])
def test_a_class_folder_without_images_is_refused(tmp_path, split, never):
    """Before: accepted without a word; a class empty in val/ was left out of the evaluation (the
    error of another task), one empty in train/ never trained. torchvision's ImageFolder refuses it."""
    root = small_tree(tmp_path)
    for f in (root / split / "b").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=rf"{split}: 1 of its 2 class folders hold no images \('b'\); that class "
                                        rf"would never be {never} there: copy its images in, or remove the folder"):
        build(root)
    from adarem.data.imagenet_layout import scan_split  # scripts/prepare_imagenet.py's check reports it instead

    rep = scan_split(root / split)
    assert rep.empty_classes == ["b"] and rep.images == 2
