"""Unreadable training images under data.on_corrupt=skip, through train.py: how many were replaced
is counted over every rank, survives a stop and resume, lands in run.json and is flagged in the
tables (it counted rank 0's share only, per process, and nothing reported it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import REPO, read_metrics, read_run, run_train, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broken_tree(tmp_path_factory):
    """2 classes x 8 training photos, 4 of them unreadable (garbage and truncated), 2 val each."""
    root = make_photo_tree(tmp_path_factory.mktemp("corrupt") / "tree", classes=2, train_per_class=8,
                           val_per_class=2, size_range=(60, 90))
    photos = sorted((root / "train").rglob("*.JPEG"))
    for path in photos[1::4]:  # 2 of each class
        path.write_bytes(b"not a jpeg" if path.name.endswith("1.JPEG") else path.read_bytes()[:300])
    return root


def _args(root):
    return ["data=folder", f"data.root={root}", "data.image_size=32", "data.val_resize=36", "data.num_workers=0",
            "data.on_corrupt=skip", "trainer.batch_size=4", "trainer.epochs=2", "optimizer=sgd"]


def _counts(run_dir):
    return [r["corrupt_skipped"] for r in read_metrics(run_dir) if r["type"] == "epoch"], \
        read_run(run_dir)["corrupt_skipped"]


def test_replaced_images_are_counted_over_ranks_and_resumes(tmp_path, env, broken_tree):
    one = tmp_path / "one"
    res = run_train(_args(broken_tree), env, one)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _counts(one) == ([4, 4], 8)  # every training image is read once an epoch (16 = 4 batches of 4)
    assert "trained on 4 replacement(s) for unreadable training images" in res.stdout + res.stderr

    two = tmp_path / "two"
    res = run_train(_args(broken_tree), env, two, launcher=torchrun(2))
    assert res.returncode == 0, res.stderr[-2000:]
    assert _counts(two) == ([4, 4], 8)  # was [2, 4]: rank 0's share, cumulative

    stopped = tmp_path / "stopped"
    assert run_train(_args(broken_tree) + ["trainer.max_steps=3"], env, stopped).returncode == 0
    res = run_train(_args(broken_tree), env, stopped)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _counts(stopped) == ([4, 4], 8)  # was [3, 7]: the process's count restarted at 0

    out = tmp_path / "tables"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(one), "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained with 8 replacement(s) for unreadable training images" in (out / "tables.md").read_text()


@pytest.mark.parametrize("broken_rank", [1, 0])
def test_a_rank_that_fails_alone_is_named_in_the_record(tmp_path, env, broken_rank):
    """An unreadable validation image in one rank's shard: that rank stops with it, the other then
    fails in its next collective. run.json carried rank 0's "connection closed by peer", the cause
    only on stderr; the other rank printed Hydra's "Error executing job" and a traceback."""
    from adarem.data.datasets import list_image_folder
    from adarem.data.sampling import val_batches

    root = make_photo_tree(tmp_path / "tree", classes=2, train_per_class=4, val_per_class=2, size_range=(60, 90))
    samples, _ = list_image_folder(root / "val")
    (index,) = val_batches(len(samples), 1, broken_rank, 2)[0]  # that rank's first validation image
    bad = samples[index][0]
    with open(bad, "r+b") as f:
        f.truncate(300)
    run_dir = tmp_path / "run"
    res = run_train([*_args(root)[:-4], "trainer.batch_size=4", "trainer.epochs=1"], env, run_dir,
                    launcher=torchrun(2))
    assert res.returncode != 0
    record = read_run(run_dir)
    assert record["status"] == "failed"
    other = 1 - broken_rank
    if broken_rank == 1:
        assert record["error"].startswith(f"rank 1: DataError: corrupt image {bad} in the evaluation set"), record["error"]
        assert record["error"].endswith("(rank 0 then stopped with it)"), record["error"]
    else:
        assert record["error"].startswith(f"DataError: corrupt image {bad} in the evaluation set"), record["error"]
    # each rank says what stopped it in one line: the cause, and the other rank naming it
    assert f"error: corrupt image {bad} in the evaluation set" in res.stderr, res.stderr[-3000:]
    assert (f"error: rank {other} stopped: rank {broken_rank} failed first (DataError: corrupt image {bad}"
            in res.stderr), res.stderr[-3000:]
    assert "Error executing job" not in res.stderr  # Hydra's, with a traceback through the engine
    assert not [line for line in res.stderr.splitlines() if line.lstrip().startswith('File "') and "/adarem/" in line]


def test_a_diverged_run_records_its_replaced_images(tmp_path, env, broken_tree):
    run_dir = tmp_path / "diverged"
    res = run_train(_args(broken_tree), dict(env, ADAREM_FAULT="nan_loss@7"), run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    record = read_run(run_dir)
    assert record["status"] == "diverged" and record["diverged_at_step"] == 7
    # epoch 0's 4 and those of epoch 1's first 3 batches (it had none before)
    assert record["corrupt_skipped"] >= 4 and "corrupt_skipped_exact" not in record


def test_a_resume_from_a_checkpoint_without_the_count_says_it_is_a_lower_bound(tmp_path, env, broken_tree):
    import torch

    run_dir = tmp_path / "old"
    assert run_train(_args(broken_tree) + ["trainer.max_steps=6"], env, run_dir).returncode == 0
    for path in run_dir.glob("checkpoint*.pt"):  # as written before the count was kept
        ckpt = torch.load(path, weights_only=False)
        for key in ("corrupt_skipped", "corrupt_exact"):
            ckpt["position"].pop(key)
        for rank in ckpt["per_rank"]:
            rank["progress"].pop("corrupt_skipped")
        torch.save(ckpt, path)
    res = run_train(_args(broken_tree), env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    record = read_run(run_dir)
    assert record["corrupt_skipped"] < 8 and record["corrupt_skipped_exact"] is False


def test_a_run_diverged_at_its_evaluation_counts_the_epochs_replacements_once(tmp_path, env, broken_tree):
    """One step an epoch (batch 16) whose update blows the weights up: the epoch's evaluation ends
    the run diverged (tests/faults/test_diverged_weights.py), with the epoch's 4 replacements
    counted once, not once by the epoch's metrics and again by the divergence."""
    run_dir = tmp_path / "diverged"
    args = _args(broken_tree) + ["trainer.batch_size=16", "trainer.epochs=1", "optimizer.lr=1e6", "schedule=constant"]
    res = run_train(args, env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    record = read_run(run_dir)
    assert (record["status"], record["diverged_at_step"], record.get("diverged_in")) == ("diverged", 1, "validation")
    assert record["corrupt_skipped"] == 4
