"""A run directory is continued or reported only for the images it was trained on.

Same configuration, same data.root, but the tree's contents changed after the run: two class
folders swapped (every count, size and class name unchanged), or 25 images added to one class
(the training samples per epoch, 22 batches of 64, unchanged). The data identity used to record
only names, counts per epoch and class names, so a relaunch reported the old run's error as this
data's and make_tables pooled runs of the two datasets. Real train.py runs on a private copy of
the digits ImageFolder tree (1438 training, 359 validation JPEGs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adarem.data.digits import ensure_digits_tree
from tests.conftest import copy_run, read_run, run_train

NEW_KEYS = ("train_images", "val_images", "train_sha1", "val_sha1")


def _args(tree: Path) -> list[str]:
    return ["optimizer=sgd", f"data.root={tree}", "trainer.epochs=1"]


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def _swap(train: Path, a: str, b: str) -> None:
    (train / a).rename(train / "swap")
    (train / b).rename(train / a)
    (train / "swap").rename(train / b)


def _add_copies(class_dir: Path, n: int) -> list[Path]:
    added = []
    for i, src in enumerate(sorted(class_dir.iterdir())[:n]):
        dst = class_dir / f"added_{i:02d}.jpg"
        shutil.copy(src, dst)
        added.append(dst)
    return added


def _snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, env):
    """A private digits tree and a run finished on it, trained with one loader worker. Tests that
    change the tree put it back."""
    base = tmp_path_factory.mktemp("changed_data")
    tree = ensure_digits_tree(base / "tree")
    run_dir = base / "finished"
    res = run_train(_args(tree) + ["data.num_workers=1"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    ident = read_run(run_dir)["data_identity"]
    assert (ident["train_images"], ident["val_images"], ident["train_samples"]) == (1438, 359, 1408)
    return tree, run_dir


@pytest.fixture(scope="module")
def stopped_on_tree(digits_run, env):
    """A run of the same configuration on digits_run's tree, stopped by trainer.max_steps=3 (exit 0).
    Read only: copy_run() it to change it."""
    tree, finished = digits_run
    run_dir = finished.parent / "stopped"
    res = run_train(_args(tree) + ["trainer.max_steps=3"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_unchanged_tree_reports_the_finished_run_whatever_the_workers(digits_run, env):
    """data.num_workers is not part of the configuration, and not of the data identity either."""
    tree, run_dir = digits_run
    before = _snapshot(run_dir)
    res = run_train(_args(tree) + ["data.num_workers=2"], env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "run already finished" in res.stdout
    assert _snapshot(run_dir) == before


def test_swapped_class_folders_are_refused(digits_run, env):
    tree, run_dir = digits_run
    before = _snapshot(run_dir)
    _swap(tree / "train", "0", "1")
    try:
        res = run_train(_args(tree), env, run_dir)
    finally:
        _swap(tree / "train", "0", "1")
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "holds a finished run whose dataset differs" in line and "train_sha1" in line
    # nothing that the swap leaves unchanged is named: the line says what differs
    assert not any(k in line for k in ("train_images", "train_samples", "classes_sha1", "val_sha1"))
    assert "already finished" not in res.stdout
    assert _snapshot(run_dir) == before


def test_added_images_are_refused_though_the_samples_per_epoch_agree(digits_run, env):
    tree, run_dir = digits_run
    before = _snapshot(run_dir)
    added = _add_copies(tree / "train" / "5", 25)
    try:
        res = run_train(_args(tree), env, run_dir)
    finally:
        for p in added:
            p.unlink()
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "train_images (training images) 1438 then, 1463 now" in line and "train_sha1" in line
    assert "train_samples" not in line  # 22 batches of 64 either way: what the old identity saw
    assert _snapshot(run_dir) == before


def test_a_stopped_run_is_not_resumed_on_changed_data(tmp_path, env, digits_run, stopped_on_tree):
    tree, _ = digits_run
    run_dir = copy_run(stopped_on_tree, tmp_path / "stopped")
    before = _snapshot(run_dir)
    assert {"checkpoint.pt", "run.json", "metrics.jsonl"} <= set(before)

    _swap(tree / "train", "3", "8")
    try:
        res = run_train(_args(tree), env, run_dir)
    finally:
        _swap(tree / "train", "3", "8")
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "holds a stopped run whose dataset differs" in line and "train_sha1" in line
    assert _snapshot(run_dir) == before

    added = _add_copies(tree / "train" / "5", 25)
    try:
        res = run_train(_args(tree), env, run_dir)
    finally:
        for p in added:
            p.unlink()
    assert res.returncode == 2
    assert "train_images (training images) 1438 then, 1463 now" in _one_error_line(res)
    assert _snapshot(run_dir) == before


def test_a_record_from_before_the_contents_keys_is_still_reported(digits_run, env, tmp_path):
    """run.json written before train_images/val_images/train_sha1/val_sha1 existed: the keys it
    has are compared, so its finished run is reported, not refused; an old key that differs is
    still refused."""
    tree, src = digits_run
    run_dir = copy_run(src, tmp_path / "old")
    record = read_run(run_dir)
    for k in NEW_KEYS:
        del record["data_identity"][k]
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    before = _snapshot(run_dir)
    res = run_train(_args(tree), env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "run already finished" in res.stdout
    assert _snapshot(run_dir) == before

    record["data_identity"]["classes_sha1"] = "0123456789"
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    before = _snapshot(run_dir)
    res = run_train(_args(tree), env, run_dir)
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "classes_sha1 (hash of the class names) '0123456789' then" in line
    assert not any(k in line for k in NEW_KEYS)
    assert _snapshot(run_dir) == before


def test_resume_from_a_checkpoint_path_checks_the_data_it_was_trained_on(tmp_path, env, digits_run,
                                                                         stopped_on_tree):
    """resume=<path> may name a checkpoint of another directory: the new directory has no record to
    compare with, so the checkpoint carries its data identity."""
    tree, _ = digits_run
    stopped = stopped_on_tree  # its checkpoint is only read
    _swap(tree / "train", "3", "8")
    try:
        res = run_train(_args(tree) + [f"resume={stopped / 'checkpoint.pt'}"], env, tmp_path / "elsewhere")
    finally:
        _swap(tree / "train", "3", "8")  # the same data again: it continues there (below)
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "the checkpoint" in line and "was trained on a dataset that differs" in line and "train_sha1" in line
    assert not (tmp_path / "elsewhere" / "run.json").exists() or read_run(tmp_path / "elsewhere")["status"] != "finished"
    res = run_train(_args(tree) + [f"resume={stopped / 'checkpoint.pt'}"], env, tmp_path / "again")
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(tmp_path / "again")["status"] == "finished"
