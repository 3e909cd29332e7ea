"""Fashion-MNIST's IDX files that are not what they should be: one DataError line naming the file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from adarem.data import DataError
from adarem.data.fashion_mnist import FILES, load_split


def write_idx(path, arr: np.ndarray):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def files(root, images, labels):
    img_name, lbl_name = FILES["test"]
    write_idx(root / img_name, images)
    write_idx(root / lbl_name, labels)
    return root / img_name, root / lbl_name


def test_small_valid_files_load(tmp_path):
    files(tmp_path, np.zeros((5, 28, 28)), np.arange(5))
    x, y = load_split(tmp_path, "test")
    assert x.shape == (5, 1, 28, 28) and y.tolist() == list(range(5))


def test_a_truncated_gz_file_is_one_line_naming_it(tmp_path):
    img, _ = files(tmp_path, np.random.default_rng(0).integers(0, 255, (50, 28, 28)), np.arange(50) % 10)
    img.write_bytes(img.read_bytes()[:200])  # a download that stopped
    with pytest.raises(DataError, match=rf"{img} cannot be read as a gz file .*again"):
        load_split(tmp_path, "test")


def test_labels_out_of_range_or_a_swapped_file_are_refused(tmp_path):
    files(tmp_path, np.zeros((5, 28, 28)), np.array([0, 1, 2, 3, 12]))
    with pytest.raises(DataError, match=r"holds label 12, but there are 10 classes"):
        load_split(tmp_path, "test")
    files(tmp_path, np.zeros((5, 28, 28)), np.zeros((5, 28, 28)))  # the images file given as labels
    with pytest.raises(DataError, match=r"expected N x 28 x 28 images and N labels"):
        load_split(tmp_path, "test")


def test_in_chans_3_reads_each_greyscale_image_as_3_equal_channels(tmp_path):
    import torch

    from adarem.config import DataConfig
    from adarem.data import build_data

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        img_name, lbl_name = FILES[split]
        write_idx(tmp_path / img_name, rng.integers(0, 256, (40, 28, 28)))
        write_idx(tmp_path / lbl_name, np.arange(40) % 10)
    out = {}
    for ch in (1, 3):  # the same plan and flips (seeded per sample): only the channels differ
        cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), image_size=28, random_resized_crop=False,
                         hflip=True, in_chans=ch, mean=[0.3] * ch, std=[0.4] * ch, num_workers=0)
        data = build_data(cfg, 8, 0, 1, 0, torch.device("cpu"))
        assert data.in_chans == ch
        out[ch] = [torch.cat([data.train.to_device(x, y, torch.device("cpu"), False)[0] for x, y in loader.epoch(0)])
                   for loader in (data.train, data.val)]
        contents = data.contents
    for one, three in zip(out[1], out[3]):
        assert three.shape[1] == 3 and torch.equal(three, one.expand(-1, 3, -1, -1))
    assert contents["train_images"] == 40  # the identity is of the files, whatever in_chans
