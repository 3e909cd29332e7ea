"""scripts/prepare_imagenet.py on a miniature ImageNet: checks, and the val layout by symlinks."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = str(REPO / "scripts" / "prepare_imagenet.py")


def _tree(root, flat_val=False):
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"\xff\xd8jpeg\xff\xd9")
    (root / "val").mkdir()
    for i, wnid in enumerate(("n01440764", "n01443537", "n01443537")):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        target = root / "val" / name if flat_val else root / "val" / wnid / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"\xff\xd8jpeg\xff\xd9")
    return root


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_complete_and_incomplete_trees(tmp_path):
    root = _tree(tmp_path / "inet")
    ok = run(root, "--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    assert ok.returncode == 0 and "complete" in ok.stdout
    bad = run(root)  # against the real ImageNet counts
    assert bad.returncode == 1
    assert "train: 2 class folders, expected 1000" in bad.stdout and "val: 3 images, expected 50000 (-49997)" in bad.stdout
    (root / "train" / "n01440764" / "notes.txt").write_text("x")
    extra = run(root, "--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    assert extra.returncode == 1 and "not an image: n01440764/notes.txt" in extra.stdout


def test_flat_val_layout_by_symlinks(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    before = sorted(p.name for p in (root / "val").iterdir())
    flagged = run(root, "--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    assert flagged.returncode == 1 and "flat" in flagged.stdout
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n" + "\n".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4" for i, w in enumerate(("n01440764", "n01443537", "n01443537"))) + "\n")
    out = tmp_path / "val_by_class"
    res = run(root, "--val-labels", labels, "--out", out)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "n01443537").iterdir()) == ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"]
    assert all(p.is_symlink() for p in out.rglob("*.JPEG"))
    assert sorted(p.name for p in (root / "val").iterdir()) == before  # originals untouched
    again = run(root, "--val-labels", labels, "--out", out)
    assert again.returncode == 2 and "not empty" in again.stderr
