"""The DALI loader's parallel reader (issue 15, item 6), with a real DALI CPU pipeline on real JPEGs:
files read by DALI's Python workers, one pipeline per loader kept across epochs, resumes and
evaluations, the exact sample plan, and crops drawn per sample like the torch loader's."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from adarem.config import DataConfig
from adarem.data import DataError, build_data
from adarem.data.sampling import train_batches, val_batches
from tests.conftest import REPO

pytest.importorskip("nvidia.dali")
from adarem.data import dali  # noqa: E402

CPU = torch.device("cpu")


def cfg_for(root, **kw) -> DataConfig:
    kw.setdefault("num_workers", 2)
    kw.setdefault("loader", "dali")
    threads = {"dali_threads": 2} if kw["loader"] == "dali" else {}  # read by DALI only (refused otherwise)
    return DataConfig(name="folder", root=str(root), image_size=64, val_resize=73, **threads, **kw)


def collect(loader, epoch=0, start=0):
    xs, ys = [], []
    for x, y in loader.epoch(epoch, start):
        if hasattr(loader, "to_device"):
            x, y = loader.to_device(x, y, CPU, False)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def test_workers_read_exactly_what_the_training_thread_read(tree):
    """Parallel reading (2 forked workers) and in-thread reading (num_workers=0) give bit-identical
    batches, with the plan's labels, the short last validation batch trimmed."""
    par = build_data(cfg_for(tree), 6, 0, 1, 0, CPU)
    seq = build_data(cfg_for(tree, num_workers=0), 6, 0, 1, 0, CPU)
    for split, epoch in (("train", 2), ("val", 0)):
        a, b = collect(getattr(par, split), epoch), collect(getattr(seq, split), epoch)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert par.train._idle[0].pipe.py_start_method == "fork"
    samples = par.train.samples
    plan = [i for batch in train_batches(18, 6, 0, 1, 0, 2) for i in batch]
    assert collect(par.train, 2)[1].tolist() == [samples[i][1] for i in plan]
    val = collect(par.val)
    assert len(val[1]) == 15 and [len(b) for b in val_batches(15, 6, 0, 1)] == [6, 6, 3]
    assert val[1].tolist() == [c for _, c in par.val.samples]


def test_train_crops_and_flips_are_the_torch_loaders(tree):
    """The crop box and flip come from the same per-sample draws as the torch loader's: the two
    loaders' training images differ only by resampling (about a grey level on average)."""
    d = collect(build_data(cfg_for(tree), 6, 0, 1, 0, CPU).train, 3)
    t = collect(build_data(cfg_for(tree, loader="torch", num_workers=0), 6, 0, 1, 0, CPU).train, 3)
    assert torch.equal(d[1], t[1])
    diff = (d[0] - t[0]).abs().mean(dim=(1, 2, 3))
    assert float(diff.max()) < 0.02, diff  # normalised units: 0.02 is about one grey level
    other = collect(build_data(cfg_for(tree, loader="torch", num_workers=0), 6, 0, 1, 0, CPU).train, 4)
    assert float((d[0] - other[0]).abs().mean()) > 0.2  # another epoch: other crops, other samples


def test_one_pipeline_serves_epochs_resumes_and_nested_passes(tree):
    data = build_data(cfg_for(tree), 6, 0, 1, 0, CPU)
    train = data.train
    e1 = collect(train, 1)
    feed = train._idle[0]
    assert torch.equal(collect(train, 1)[0], e1[0])  # deterministic: no DALI random state
    resumed = collect(train, 1, start=1)  # a mid-epoch resume: exact samples and exact crops
    assert torch.equal(resumed[0], e1[0][6:]) and torch.equal(resumed[1], e1[1][6:])
    left = train.epoch(2)  # a pass left after one batch
    next(left)
    del left
    e2 = collect(train, 2)
    outer = train.epoch(2)  # BN recalibration inside a training epoch: a nested pass
    first = next(outer)[0]
    nested = collect(train, 2)
    rest = [x for x, _ in outer]
    assert torch.equal(torch.cat([first, *rest]), e2[0]) and torch.equal(nested[0], e2[0])
    assert train._kept == 2 and len(train._idle) == 2 and feed in train._idle  # built twice in all
    assert torch.equal(collect(data.val)[0], collect(data.val)[0]) and data.val._kept == 1
    train.close()
    data.val.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_files(tree, tmp_path, num_workers):
    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    (root / "train" / "class_001" / "img_0002.JPEG").write_bytes((root / "train" / "class_001" / "img_0002.JPEG")
                                                                   .read_bytes()[:600])
    (root / "train" / "class_002" / "img_0001.JPEG").write_bytes(b"this is not a jpeg at all" * 20)
    data = build_data(cfg_for(root, num_workers=num_workers), 18, 0, 1, 0, CPU)
    with pytest.raises(DataError, match=r"corrupt image .*img_000[12]\.JPEG: not a decodable image.*on_corrupt=skip"):
        collect(data.train)
    assert data.train._kept == 0
    data = build_data(cfg_for(root, num_workers=num_workers, on_corrupt="skip"), 18, 0, 1, 0, CPU)
    for epoch in range(2):
        x, y = collect(data.train, epoch)
        assert len(y) == 18 and torch.isfinite(x).all()
    assert data.train.corrupt_count == 4  # two replaced samples per epoch
    for path in (root / "train").rglob("*.JPEG"):
        path.write_bytes(b"junk")
    data = build_data(cfg_for(root, num_workers=num_workers, on_corrupt="skip"), 18, 0, 1, 0, CPU)
    with pytest.raises(DataError, match="^every image of the dataset is unreadable$"):
        collect(data.train)


def test_jpeg_size_reads_the_frame_header(tree, tmp_path):
    photo = np.asarray(Image.open(next((tree / "train").rglob("*.JPEG"))))
    extra = []
    for name, kw in (("progressive", dict(progressive=True)), ("optimized", dict(optimize=True))):
        Image.fromarray(photo[:101, :77]).save(tmp_path / f"{name}.jpg", quality=80, **kw)
        extra.append(tmp_path / f"{name}.jpg")
    Image.fromarray(photo[:90, :120, 0]).save(tmp_path / "gray.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated; pixels are used as stored, like PIL does
    Image.fromarray(photo[:50, :70]).save(tmp_path / "exif.jpg", exif=exif)
    for path in [*(tree / "train").rglob("*.JPEG"), *extra, tmp_path / "gray.jpg", tmp_path / "exif.jpg"]:
        data = np.fromfile(path, dtype=np.uint8)
        with Image.open(io.BytesIO(data)) as img:
            assert dali.jpeg_size(data) == (img.size[1], img.size[0]), path


@pytest.mark.slow
def test_dali_workers_die_with_a_killed_training_process(tree):
    """kill -9 of the process that started DALI's workers ends them too (they would otherwise
    wait for tasks forever, and hold a captured stdout open)."""
    script = textwrap.dedent(f"""
        import multiprocessing, os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from adarem.config import DataConfig
        from adarem.data import build_data
        cfg = DataConfig(name="folder", root={str(tree)!r}, image_size=64, loader="dali", num_workers=2)
        data = build_data(cfg, 6, 0, 1, 0, torch.device("cpu"))
        it = data.train.epoch(0)
        next(it)
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    pids = [int(p) for p in res.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_spawned_workers_as_on_a_gpu(tree, monkeypatch):
    """Where CUDA is initialised the workers are spawned (the callback is pickled): same batches."""
    ref = collect(build_data(cfg_for(tree, num_workers=0), 6, 0, 1, 0, CPU).train, 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    data = build_data(cfg_for(tree), 6, 0, 1, 0, CPU)
    got = collect(data.train, 1)
    assert data.train._idle[0].pipe.py_start_method == "spawn"
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    data.train.close()
