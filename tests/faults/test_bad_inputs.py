"""Bad input through the real train.py command line: a non-zero exit, one clear line on stderr
(no traceback), and no run directory that looks finished."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import read_run, run_train


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    good = make_photo_tree(base / "good", classes=2, train_per_class=4, val_per_class=1, size_range=(60, 90))
    empty = base / "empty"
    for split in ("train", "val"):
        (empty / split / "class_a").mkdir(parents=True)
    mismatch = base / "mismatch"
    shutil.copytree(good, mismatch)
    (mismatch / "val" / "class_001").rename(mismatch / "val" / "class_xyz")
    return {"good": good, "empty": empty, "mismatch": mismatch}


def folder(root, *extra):
    return ["data=folder", f"data.root={root}", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4", *extra]


CASES = {
    "unknown model": (["model.name=resnet19"], "unknown model 'resnet19'; close matches"),
    "unknown optimizer": (["optimizer=nadam"], "Could not find 'optimizer/nadam'"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0"),
    "zero lr": (["optimizer.lr=0"], "optimizer.lr=0.0 must be > 0"),
    "beta outside [0,1)": (["optimizer.beta=1.0"], "optimizer.beta=1.0 must be in [0, 1)"),
    "batch size 0": (["trainer.batch_size=0"], "trainer.batch_size=0 must be >= 1"),
    "epochs < 1": (["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
    "missing dataset root": (["data=fashion_mnist", "data.root=/no/such/dir"], "install it with"),
    "missing imagefolder root": (["data=imagenet", "data.root=/no/such/imagenet"], "is not a directory"),
    "unknown key": (["trainer.epoch=3"], "Key 'epoch' not in 'TrainerConfig'"),
    "wrong type": (["trainer.epochs=ten"], "could not be converted to Integer"),
    "fp16 on CPU": (["trainer.amp=fp16"], "trainer.amp=fp16 needs a CUDA device"),
    "dali on a non-folder dataset": (["data=fashion_mnist", "data.loader=dali"], "data.loader=dali reads ImageFolder trees"),
    "resume from a missing file": (["resume=/no/such/checkpoint.pt"], "no such checkpoint file"),
    "batch larger than the dataset": (["trainer.batch_size=100000"], "exceeds the"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_command_line(tmp_path, env, name):
    args, expected = CASES[name]
    _check(run_train(args, env, tmp_path / "run"), expected, tmp_path / "run")


def _check(res, expected, run_dir):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    if (run_dir / "run.json").exists():
        assert read_run(run_dir)["status"] not in ("finished", "diverged")


def test_empty_dataset(tmp_path, env, trees):
    _check(run_train(folder(trees["empty"]), env, tmp_path / "run"), "holds no images", tmp_path / "run")


def test_class_folders_differ(tmp_path, env, trees):
    _check(run_train(folder(trees["mismatch"]), env, tmp_path / "run"), "class folders differ", tmp_path / "run")


def test_unreadable_checkpoint_with_resume_auto(tmp_path, env):
    run_dir = tmp_path / "run"
    assert run_train(["trainer.max_steps=3", "trainer.batch_size=64"], env, run_dir).returncode == 75
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    (run_dir / "checkpoint_prev.pt").write_bytes(b"more garbage")
    _check(run_train(["trainer.batch_size=64"], env, run_dir), "is unreadable", run_dir)


def test_finished_run_without_resume_is_refused(tmp_path, env):
    run_dir = tmp_path / "run"
    assert run_train(["trainer.epochs=1"], env, run_dir).returncode == 0
    before = (run_dir / "metrics.jsonl").read_bytes(), json.loads((run_dir / "run.json").read_text())
    _check(run_train(["trainer.epochs=1", "resume=never"], env, run_dir), "is never overwritten", tmp_path / "nothing")
    assert (run_dir / "metrics.jsonl").read_bytes() == before[0]
    assert json.loads((run_dir / "run.json").read_text()) == before[1]


@pytest.mark.slow
def test_more_ranks_than_validation_images(tmp_path, env, trees):
    tiny = tmp_path / "tiny"
    shutil.copytree(trees["good"], tiny)
    for f in (tiny / "val" / "class_001").iterdir():  # one validation image left, two ranks
        f.unlink()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29533"]
    res = run_train(folder(tiny), env, tmp_path / "run", launcher=launcher)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert ours and all("2 ranks but only 1 validation samples" in line for line in ours), res.stderr[-2000:]
    assert not (tmp_path / "run" / "run.json").exists()
