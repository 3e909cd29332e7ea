"""The data identity's contents keys (adarem/data/identity.py) on real data: what each loader
reads, whatever the loader and its workers; holdout splits; Fashion-MNIST's loaded arrays."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from adarem.config import DataConfig
from adarem.data import build_data, data_identity
from adarem.data.identity import file_list_sha1
from tests.conftest import FASHION_ROOT, read_run, require_fashion_mnist, run_train

CPU = torch.device("cpu")
CONTENTS = ("train_images", "val_images", "train_sha1", "val_sha1")


def cfg_for(root, **kw) -> DataConfig:
    kw.setdefault("num_workers", 0)
    return DataConfig(name="folder", root=str(root), image_size=32, val_resize=36, **kw)


def identity(cfg: DataConfig, batch: int = 6):
    data = build_data(cfg, batch, 0, 1, 0, CPU)
    return data, data_identity(cfg, data)


def expected_sha1(tree: Path, split: str) -> str:
    """Written out independently of the code under test: every JPEG of <tree>/<split>, class
    folders in sorted order, one '<split>/<class>/<file>\\t<class index>' line each."""
    classes = sorted(d.name for d in (tree / split).iterdir() if d.is_dir())
    lines = [f"{split}/{c}/{f.name}\t{i}\n" for i, c in enumerate(classes)
             for f in sorted((tree / split / c).iterdir())]
    return hashlib.sha1("".join(lines).encode()).hexdigest()[:16]


def test_the_identity_is_the_file_list_every_loader_reads(tree):
    """torch with 1 or 2 workers, DALI (CPU-only here) with 0 or 2: one identity, the hash of the
    (path, class) list each loader's own reader holds."""
    ids = []
    for loader, workers in (("torch", 1), ("torch", 2), ("dali", 0), ("dali", 2)):
        if loader == "dali":
            pytest.importorskip("nvidia.dali")
        cfg = cfg_for(tree, loader=loader, num_workers=workers, **({"dali_threads": 2} if loader == "dali" else {}))
        data, ident = identity(cfg)
        train_list = data.train.samples if loader == "dali" else data.train.dataset.samples
        val_list = data.val.samples if loader == "dali" else data.val.dataset.samples
        assert ident["train_sha1"] == file_list_sha1(train_list, tree)
        assert ident["val_sha1"] == file_list_sha1(val_list, tree)
        ids.append(ident)
    assert all(i == ids[0] for i in ids[1:])
    assert ids[0]["train_images"] == 18 and ids[0]["val_images"] == 15  # 3 classes x (6 train, 5 val)
    assert ids[0]["train_sha1"] == expected_sha1(tree, "train") and ids[0]["val_sha1"] == expected_sha1(tree, "val")


def test_a_moved_copy_keeps_the_hashes_a_relabelled_class_does_not(tree, tmp_path):
    copy = Path(shutil.copytree(tree, tmp_path / "copy"))
    _, original = identity(cfg_for(tree))
    _, moved = identity(cfg_for(copy))
    assert moved["root"] != original["root"]
    assert {k: moved[k] for k in CONTENTS} == {k: original[k] for k in CONTENTS}

    # the images of class_000 now sort last in train/ and val/: same files, other labels
    for split in ("train", "val"):
        (copy / split / "class_000").rename(copy / split / "class_zzz")
    _, relabelled = identity(cfg_for(copy))
    assert relabelled["train_images"] == 18 and relabelled["val_images"] == 15
    assert relabelled["train_sha1"] != original["train_sha1"] and relabelled["val_sha1"] != original["val_sha1"]


def test_holdout_identity_is_the_two_parts_of_train(tree):
    data, ident = identity(cfg_for(tree, eval_on="holdout", holdout_fraction=1 / 3))
    assert (ident["train_images"], ident["val_images"]) == (12, 6)  # a third of the 18 training files held out
    held = [data.val.dataset.base.samples[i] for i in data.val.dataset.indices]
    kept = [data.train.dataset.base.samples[i] for i in data.train.dataset.indices]
    assert ident["val_sha1"] == file_list_sha1(held, tree) and ident["train_sha1"] == file_list_sha1(kept, tree)
    assert all(os.path.relpath(p, tree).startswith("train" + os.sep) for p, _ in held)
    _, plain = identity(cfg_for(tree))
    _, other_split = identity(cfg_for(tree, eval_on="holdout", holdout_fraction=0.5))
    assert len({plain["val_sha1"], ident["val_sha1"], other_split["val_sha1"]}) == 3


def test_fashion_mnist_identity_is_the_loaded_arrays(tmp_path):
    require_fashion_mnist()
    cfg = DataConfig(name="fashion_mnist", root=str(FASHION_ROOT))
    _, ident = identity(cfg, 64)
    assert (ident["train_images"], ident["val_images"]) == (60000, 10000)
    _, holdout = identity(DataConfig(name="fashion_mnist", root=str(FASHION_ROOT), eval_on="holdout"), 64)
    assert (holdout["train_images"], holdout["val_images"]) == (54000, 6000)
    assert holdout["train_sha1"] != ident["train_sha1"] and holdout["val_sha1"] != ident["val_sha1"]

    # one training label changed in a copy: same files, same sizes, same counts; other data
    for name in os.listdir(FASHION_ROOT):
        if name.endswith("-ubyte.gz") and name != "train-labels-idx1-ubyte.gz":
            (tmp_path / name).symlink_to(FASHION_ROOT / name)
    with gzip.open(FASHION_ROOT / "train-labels-idx1-ubyte.gz", "rb") as f:
        labels = bytearray(f.read())
    labels[8 + 123] = (labels[8 + 123] + 1) % 10  # after the 8-byte IDX header
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(labels))
    _, changed = identity(DataConfig(name="fashion_mnist", root=str(tmp_path)), 64)
    assert changed["train_images"] == 60000 and changed["val_sha1"] == ident["val_sha1"]
    assert changed["train_sha1"] != ident["train_sha1"]


def test_synthetic_identity_has_no_contents():
    _, ident = identity(DataConfig(name="synthetic", synthetic_train_size=64, synthetic_val_size=32,
                                   num_classes=4, image_size=8), 16)
    assert {k: ident[k] for k in CONTENTS} == dict.fromkeys(CONTENTS)


def test_train_py_records_the_same_identity_with_torch_and_dali(tree, tmp_path, env):
    """What run.json records (and a relaunch compares): the same for both loaders on one tree."""
    pytest.importorskip("nvidia.dali")
    recorded = {}
    for loader, workers in (("torch", 1), ("dali", 2)):
        run_dir = tmp_path / loader
        res = run_train(["data=folder", f"data.root={tree}", f"data.loader={loader}", f"data.num_workers={workers}",
                         "data.image_size=32", "data.val_resize=36", *(["data.dali_threads=2"] * (loader == "dali")),
                         "trainer.batch_size=6",
                         "trainer.max_steps=1"], env, run_dir)
        assert res.returncode == 0, res.stderr[-3000:]  # stopped after one step: the record is written
        recorded[loader] = read_run(run_dir)["data_identity"]
    assert recorded["torch"] == recorded["dali"]
    assert recorded["torch"]["train_sha1"] == expected_sha1(tree, "train")
