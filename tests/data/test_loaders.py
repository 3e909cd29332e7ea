"""The torch and DALI loaders on real JPEGs: labels, validation images, sharding, corrupt files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from adarem.config import DataConfig
from adarem.data import DataError, build_data
from adarem.data.datasets import ImageFolderDataset
from adarem.data.sampling import train_batches, val_batches
from tests.conftest import read_run, run_train

pytest.importorskip("nvidia.dali")
CPU = torch.device("cpu")


def cfg_for(root, **kw) -> DataConfig:
    return DataConfig(name="folder", root=str(root), image_size=64, val_resize=73, num_workers=0, **kw)


def collect(loader, epoch=0):
    xs, ys = [], []
    for x, y in loader.epoch(epoch):
        if hasattr(loader, "to_device"):  # the torch loader's uint8 batches, finished as training sees them
            x, y = loader.to_device(x, y, CPU, False)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def test_dali_and_torch_agree_on_labels_and_validation_images(tree):
    torch_data = build_data(cfg_for(tree), 6, 0, 1, 0, CPU)
    dali_data = build_data(cfg_for(tree, loader="dali"), 6, 0, 1, 0, CPU)
    assert torch_data.classes == dali_data.classes == ["class_000", "class_001", "class_002"]
    xt, yt = collect(torch_data.val)
    xd, yd = collect(dali_data.val)
    assert torch.equal(yt, yd) and len(yt) == 15
    assert xt.shape == xd.shape == (15, 3, 64, 64)
    diff = (xt - xd).abs()
    # same decoder (libjpeg-turbo), same geometry, different resampling code: about one grey level
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.05, (float(diff.mean()), float(diff.max()))
    # train labels follow the same plan in both loaders
    _, yt_train = collect(torch_data.train)
    _, yd_train = collect(dali_data.train)
    assert torch.equal(yt_train, yd_train)
    assert len(dali_data.train) == len(torch_data.train) == 18 // 6


def test_dali_channels_last_and_half_outputs(tree):
    plain = collect(build_data(cfg_for(tree, loader="dali"), 6, 0, 1, 0, CPU).val)[0]
    nhwc = collect(build_data(cfg_for(tree, loader="dali"), 6, 0, 1, 0, CPU, channels_last=True).val)[0]
    assert nhwc.shape == plain.shape and nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, plain)
    half = collect(build_data(cfg_for(tree, loader="dali"), 6, 0, 1, 0, CPU, half=True).val)[0]
    assert half.dtype == torch.float16 and torch.allclose(half.float(), plain, atol=1e-2)


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_two_rank_validation_covers_every_image_once(tree, loader):
    seen = []
    for rank in range(2):
        data = build_data(cfg_for(tree, loader=loader), 4, rank, 2, 0, CPU)
        _, y = collect(data.val)
        seen.append(len(y))
    assert sum(seen) == 15 and seen == [8, 7]
    shards = [set(i for b in val_batches(15, 2, r, 2) for i in b) for r in range(2)]
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(15))


def test_train_plan_is_world_size_invariant():
    one = train_batches(100, 8, 0, 1, seed=3, epoch=2)
    two = [train_batches(100, 8, r, 2, seed=3, epoch=2) for r in range(2)]
    assert len(one) == 12 == len(two[0])
    for k in range(12):
        assert sorted(one[k]) == sorted(two[0][k] + two[1][k])
    assert train_batches(100, 8, 0, 1, seed=3, epoch=2, start_batch=5) == one[5:]
    assert train_batches(100, 8, 0, 1, seed=3, epoch=3) != one


def _corrupt_copy(tree, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    truncated = root / "train" / "class_001" / "img_0002.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:600])
    garbage = root / "train" / "class_002" / "img_0001.JPEG"
    garbage.write_bytes(b"this is not a jpeg at all" * 20)
    return root, truncated, garbage


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_corrupt_and_truncated_jpegs(tree, tmp_path, loader):
    root, truncated, garbage = _corrupt_copy(tree, tmp_path)
    data = build_data(cfg_for(root, loader=loader), 18, 0, 1, 0, CPU)
    with pytest.raises(DataError, match=r"corrupt image .*img_000[12]\.JPEG.*data.on_corrupt=skip"):
        collect(data.train)
    data = build_data(cfg_for(root, loader=loader, on_corrupt="skip"), 18, 0, 1, 0, CPU)
    x, y = collect(data.train)
    assert len(y) == 18 and torch.isfinite(x).all()
    assert data.train.corrupt_count == 2


def _odd_but_readable_copy(tree, tmp_path):
    """ImageNet's quirks that PIL reads: a PNG named .JPEG, a real .png, a JPEG with trailing bytes
    past the 64 the marker test looks at, a CMYK JPEG (val/class_001)."""
    from PIL import Image

    root = tmp_path / "odd"
    shutil.copytree(tree, root)
    val = root / "val" / "class_001"
    photos = sorted(val.glob("*.JPEG"))
    with Image.open(photos[0]) as img:
        img.convert("RGB").save(val / "img_0000.JPEG", format="PNG")  # replaced by a PNG, same name
    with Image.open(photos[1]) as img:
        img.convert("RGB").save(val / "img_0001.png")
    photos[1].unlink()
    photos[2].write_bytes(photos[2].read_bytes() + bytes(range(200)))
    with Image.open(photos[3]) as img:
        img.convert("CMYK").save(photos[3], format="JPEG", quality=95)
    return root


def test_dali_reads_every_image_the_torch_loader_reads(tree, tmp_path):
    """DALI's marker test rejected a PNG named .JPEG (one is in ImageNet's train split) and a JPEG
    with trailing bytes, though both loaders decode them: the default on_corrupt=error stopped the
    run, and skip trained DALI on other images than the torch loader."""
    root = _odd_but_readable_copy(tree, tmp_path)
    xt, yt = collect(build_data(cfg_for(root), 6, 0, 1, 0, CPU).val)
    dali_val = build_data(cfg_for(root, loader="dali"), 6, 0, 1, 0, CPU).val
    xd, yd = collect(dali_val)
    assert dali_val.corrupt_count == 0 and torch.equal(yt, yd) and len(yt) == 15
    diff = (xt - xd).abs().mean(dim=(1, 2, 3))
    assert float(diff.max()) < 0.02, diff  # every image, the odd ones included, is the same picture


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_an_evaluation_image_is_never_replaced(tree, tmp_path, loader):
    """on_corrupt=skip replaces training images only: a validation error measured with another
    image in place of an unreadable one is another set's error (it was reported as this set's)."""
    root = tmp_path / "broken_val"
    shutil.copytree(tree, root)
    bad = root / "val" / "class_000" / "img_0001.JPEG"
    bad.write_bytes(bad.read_bytes()[:600])
    data = build_data(cfg_for(root, loader=loader, on_corrupt="skip"), 6, 0, 1, 0, CPU)
    with pytest.raises(DataError, match=r"corrupt image .*img_0001\.JPEG in the evaluation set: .*training images only"):
        collect(data.val)
    if loader == "torch":  # the lr search's holdout is an evaluation set too
        cfg = dict(on_corrupt="skip", eval_on="holdout", holdout_fraction=0.3)
        held = build_data(cfg_for(tree, **cfg), 6, 0, 1, 0, CPU).val.dataset
        copy = tmp_path / "broken_holdout"
        shutil.copytree(tree, copy)
        target = copy / Path(held.base.samples[held.indices[0]][0]).relative_to(tree)
        target.write_bytes(target.read_bytes()[:600])
        holdout = build_data(cfg_for(copy, **cfg), 6, 0, 1, 0, CPU)
        with pytest.raises(DataError, match="in the evaluation set"):
            collect(holdout.val)


def test_a_replaced_training_image_never_comes_from_the_holdout(tree, tmp_path):
    """Under a holdout split, an unreadable training image is replaced by the next training image,
    never by the next file of train/ (which may be held out: selection data leaking into training)."""
    from adarem.data.datasets import holdout_indices

    n = 18
    keep, held = holdout_indices(n, 0.3)
    i = next(k for k, b in enumerate(keep) if b + 1 in held)  # its next file is held out
    root = tmp_path / "broken_train"
    shutil.copytree(tree, root)
    cfg = cfg_for(root, on_corrupt="skip", eval_on="holdout", holdout_fraction=0.3)
    data = build_data(cfg, 6, 0, 1, 0, CPU)
    train = data.train.dataset
    bad = Path(train.base.samples[keep[i]][0])
    bad.write_bytes(bad.read_bytes()[:600])
    x, label, corrupt = train[(i, 0)]
    assert corrupt

    def as_if(source: int):  # sample keep[i] (its augmentation draws) showing the picture of `source`
        samples = list(train.base.samples)
        samples[keep[i]] = samples[source]
        return ImageFolderDataset(samples, train.base.transform, train.base.seed, "error", train.base.mode).item(
            keep[i], 0, [])

    next_training, _, _ = as_if(keep[i + 1])
    next_file, _, _ = as_if(keep[i] + 1)  # held out
    assert label == train.base.samples[keep[i + 1]][1]
    assert torch.equal(x, next_training) and not torch.equal(x, next_file)


@pytest.mark.slow
def test_train_py_full_epoch_with_dali(tmp_path, env, tree):
    run_dir = tmp_path / "dali"
    res = run_train(["data=folder", f"data.root={tree}", "data.loader=dali", "data.image_size=64",
                     "data.val_resize=73", "trainer.epochs=1", "trainer.batch_size=6", "model=resnet18"], env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    run = read_run(run_dir)
    assert run["status"] == "finished" and run["val_samples"] == 15 and run["steps_per_epoch"] == 3


def test_photo_tree_without_scikit_learn_reads_the_photos_from_a_folder(tmp_path, monkeypatch):
    """The GPU check's machine has no scikit-learn: gpu_check.sh points ADAREM_SAMPLE_PHOTOS at a
    copy of its two photos, and the trees made from it are byte-identical."""
    import sklearn

    from adarem.data import photo_tree

    with_sklearn = photo_tree.make_photo_tree(tmp_path / "a", classes=2, train_per_class=2, val_per_class=1)
    copy = tmp_path / "photos"
    copy.mkdir()
    for name in photo_tree.PHOTO_NAMES:
        shutil.copy(Path(sklearn.__file__).parent / "datasets" / "images" / name, copy)
    monkeypatch.setenv(photo_tree.PHOTOS_ENV, str(copy))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # importing it now fails
    from_folder = photo_tree.make_photo_tree(tmp_path / "b", classes=2, train_per_class=2, val_per_class=1)
    files = sorted(p.relative_to(with_sklearn) for p in with_sklearn.rglob("*.JPEG"))
    assert len(files) == 6
    assert all((with_sklearn / f).read_bytes() == (from_folder / f).read_bytes() for f in files)
    monkeypatch.delenv(photo_tree.PHOTOS_ENV)
    with pytest.raises(RuntimeError, match="pip install scikit-learn, or set ADAREM_SAMPLE_PHOTOS"):
        photo_tree.make_photo_tree(tmp_path / "c")


def test_cached_photo_tree_links_repeats_and_is_made_once(tmp_path):
    """The benchmarks' cached tree: 5 training entries per class from 2 distinct files (hard links
    to them), made in a private folder renamed into place, and reused as it is by a second call
    with the same parameters; a call with other parameters is refused, never handed this tree."""
    from adarem.data.photo_tree import cached_photo_tree

    root = cached_photo_tree(tmp_path / "tree", unique_per_class=2, classes=2, train_per_class=5, val_per_class=1)
    cls = root / "train" / "class_000"
    assert sorted(p.name for p in cls.iterdir()) == [f"img_{i:04d}.JPEG" for i in range(5)]
    assert (cls / "img_0004.JPEG").samefile(cls / "img_0000.JPEG") and not (cls / "img_0001.JPEG").samefile(cls / "img_0000.JPEG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no private folder left
    mtime = (cls / "img_0001.JPEG").stat().st_mtime_ns
    assert cached_photo_tree(tmp_path / "tree", unique_per_class=2, classes=2, train_per_class=5,
                             val_per_class=1) == root
    with pytest.raises(ValueError, match="other parameters"):
        cached_photo_tree(tmp_path / "tree", classes=3, train_per_class=9)
    assert (cls / "img_0001.JPEG").stat().st_mtime_ns == mtime and not (root / "train" / "class_002").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_hidden_folder_is_not_taken_for_a_class(tree, tmp_path, split):
    """torchvision's class mapping takes .ipynb_checkpoints for class 0: every label shifts by one
    (or, in one split only, the class lists differ)."""
    root = tmp_path / "hidden"
    shutil.copytree(tree, root)
    (root / split / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((root / split / "class_000").glob("*.JPEG")), root / split / ".ipynb_checkpoints" / "a.JPEG")
    with pytest.raises(DataError, match=rf"hidden folder .*{split}/\.ipynb_checkpoints would be a class; remove it"):
        build_data(cfg_for(root), 6, 0, 1, 0, CPU)


def test_a_file_corrupt_inside_is_named_when_dali_fails_on_it(tree, tmp_path):
    """A PNG whose markers are intact but whose image data is damaged passes the reader's cheap
    test and fails in DALI's decoder: the error names the file (it said only that a batch failed,
    and pointed at files PIL decodes)."""
    from PIL import Image

    root = tmp_path / "inside"
    shutil.copytree(tree, root)
    victim = sorted((root / "train" / "class_001").glob("*.JPEG"))[2]
    with Image.open(victim) as img:
        img.convert("RGB").save(victim, format="PNG")
    raw = bytearray(victim.read_bytes())
    at = raw.find(b"IDAT") + 300
    raw[at:at + 40] = bytes(40)
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"corrupt image {victim}: PIL cannot decode it either"):
        collect(build_data(cfg_for(root, loader="dali", on_corrupt="skip"), 18, 0, 1, 0, CPU).train)
    torch_data = build_data(cfg_for(root, on_corrupt="skip"), 18, 0, 1, 0, CPU)
    collect(torch_data.train)
    assert torch_data.train.corrupt_count == 1
