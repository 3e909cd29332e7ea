"""scripts/prepare_imagenet.py on a miniature ImageNet: checks, and the val layout by symlinks.

The script's main() runs in the test process (a launch costs ~8 s of imports, torch and
torchvision, for a check of a few files); test_complete_and_incomplete_trees also runs it as the
command, `python scripts/prepare_imagenet.py`, for its exit statuses and output."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys

from tests.conftest import REPO
from tests.test_fsync import kill9, stagings, staging_of, take_over, writers

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


def command(*args):
    """The script as a command: a process of its own."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60)


_SCRIPT_MODULE = None


def run(*args):
    """What the command returns, from the script's main() in this process: its exit status and
    what it printed (an exception it raises fails the test, as a traceback would)."""
    global _SCRIPT_MODULE
    if _SCRIPT_MODULE is None:
        spec = importlib.util.spec_from_file_location("prepare_imagenet_script", SCRIPT)
        _SCRIPT_MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_SCRIPT_MODULE)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _SCRIPT_MODULE.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's refusals
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_complete_and_incomplete_trees(tmp_path):
    root = _tree(tmp_path / "inet")
    ok = run(root, "--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    assert ok.returncode == 0 and "complete" in ok.stdout
    bad = command(root)  # against the real ImageNet counts; as the command: its exit status is main()'s
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


def _one_error_line(res):
    """Bad input: exit 2 and a single 'error: ...' line on stderr (no traceback)."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0, res.stderr
    return res.stderr


def _write_labels(path, rows):
    path.write_text("".join(f"{name} {wnid}\n" for name, wnid in rows))
    return path


VAL_ROWS = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", w) for i, w in enumerate(("n01440764", "n01443537", "n01443537"))]


def test_partial_extraction_is_refused_and_leaves_nothing(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    labels = _write_labels(tmp_path / "labels.txt", VAL_ROWS + [("ILSVRC2012_val_00000004.JPEG", "n01440764"),
                                                                ("ILSVRC2012_val_00000005.JPEG", "n01443537")])
    out = tmp_path / "val_by_class"
    err = _one_error_line(run(root, "--val-labels", labels, "--out", out))
    assert "2 of the 5 images labelled" in err and "ILSVRC2012_val_00000004" in err and "linked" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["inet", "labels.txt"]


def test_failed_linking_leaves_no_partial_layout(tmp_path, monkeypatch):
    # a failure half-way (disk full, permissions, Ctrl-C) must not leave an out/ that looks complete
    from pathlib import Path

    from adarem.data import imagenet_layout

    root = _tree(tmp_path / "inet", flat_val=True)
    labels = _write_labels(tmp_path / "labels.txt", VAL_ROWS)
    real, made = Path.symlink_to, []

    def symlink_then_fail(self, target, *a, **k):
        if len(made) == 2:
            raise OSError(28, "No space left on device")
        made.append(self)
        return real(self, target, *a, **k)

    monkeypatch.setattr(Path, "symlink_to", symlink_then_fail)
    out = tmp_path / "val_by_class"
    try:
        imagenet_layout.build_val_layout(root / "val", labels, out)
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the failure was swallowed")
    assert len(made) == 2 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inet", "labels.txt"]
    assert sorted(p.name for p in (root / "val").iterdir()) == [n for n, _ in VAL_ROWS]


def test_dangling_links_are_not_counted(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    out = tmp_path / "val_by_class"
    assert run(root, "--val-labels", _write_labels(tmp_path / "labels.txt", VAL_ROWS), "--out", out).returncode == 0
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "train").symlink_to(root / "train")
    (linked / "val").symlink_to(out)
    expect = ("--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    ok = run(linked, *expect)
    assert ok.returncode == 0 and "val: 2 classes, 3 images" in ok.stdout, ok.stdout
    (root / "val").rename(tmp_path / "val_moved")  # the originals move: every val link dangles
    bad = run(linked, *expect)
    assert bad.returncode == 1 and "complete" not in bad.stdout.splitlines()[-1]
    assert "val: 2 classes, 0 images" in bad.stdout and "val: 0 images, expected 3 (-3)" in bad.stdout
    dangling = [line for line in bad.stdout.splitlines() if "dangling" in line]
    assert len(dangling) == 1 and "3 dangling" in dangling[0] and "ILSVRC2012_val_0000000" in dangling[0]


def test_check_counts_what_the_loader_reads_and_names_hidden_entries(tmp_path):
    from adarem.data.datasets import list_image_folder

    root = _tree(tmp_path / "inet")
    cls = root / "train" / "n01440764"
    (cls / "._n01440764_0.JPEG").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble: not a JPEG
    (cls / "more").mkdir()
    (cls / "more" / "n01440764_9.JPEG").write_bytes(b"\xff\xd8jpeg\xff\xd9")  # nested: the loader reads it
    res = run(root, "--expect-classes", 2, "--expect-train", 6, "--expect-val", 3)
    samples, classes = list_image_folder(root / "train")
    assert len(samples) == 8 and f"train: {len(classes)} classes, {len(samples)} images" in res.stdout, res.stdout
    assert res.returncode == 1 and "train: 8 images, expected 6 (+2)" in res.stdout
    hidden = [line for line in res.stdout.splitlines() if "hidden" in line]
    assert len(hidden) == 1 and "n01440764/._n01440764_0.JPEG" in hidden[0]
    # a hidden folder at the top of train/ becomes a class for the loader
    (cls / "._n01440764_0.JPEG").unlink()
    (root / "train" / ".ipynb_checkpoints").mkdir()
    res = run(root, "--expect-classes", 2, "--expect-train", 7, "--expect-val", 3)
    assert res.returncode == 1 and "train: 3 classes, 7 images" in res.stdout, res.stdout
    assert "train: 3 class folders, expected 2" in res.stdout
    assert any("hidden" in line and ".ipynb_checkpoints" in line for line in res.stdout.splitlines())


def test_one_file_twice_in_a_split_is_named(tmp_path):
    """Two names for one file in one split (a hard or symbolic link into another class folder) are
    read twice, under two labels; the check compared files only between train/ and val/."""
    root = _tree(tmp_path / "inet")
    first = root / "train" / "n01440764" / "n01440764_0.JPEG"
    (root / "train" / "n01443537" / "copy.JPEG").symlink_to(first)
    res = run(root, "--expect-classes", 2, "--expect-train", 7, "--expect-val", 3)
    assert res.returncode == 1, res.stdout
    line = [x for x in res.stdout.splitlines() if "another image of train/" in x]
    assert len(line) == 1 and "1 image(s)" in line[0] and "n01440764_0.JPEG" in line[0] and "copy.JPEG" in line[0], line


def test_conflicting_duplicate_labels_are_refused(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    out = tmp_path / "val_by_class"
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   + "".join(f"{n[:-5]},{w} 1 2 3 4\n" for n, w in VAL_ROWS)
                   + "ILSVRC2012_val_00000002,n01440764 5 6 7 8\n")
    err = _one_error_line(run(root, "--val-labels", csv, "--out", out))
    assert "ILSVRC2012_val_00000002" in err and "n01443537" in err and "n01440764" in err and not out.exists()
    # the same label twice is harmless
    same = _write_labels(tmp_path / "labels.txt", VAL_ROWS + VAL_ROWS[1:2])
    res = run(root, "--val-labels", same, "--out", out)
    assert res.returncode == 0 and "linked 3 " in res.stdout, res.stderr


def test_malformed_labels_file_is_one_error_line(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    out = tmp_path / "val_by_class"
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    assert "ImageId" in _one_error_line(run(root, "--val-labels", bad_header, "--out", out))
    no_class = tmp_path / "no_class.csv"
    no_class.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
    assert "ILSVRC2012_val_00000001" in _one_error_line(run(root, "--val-labels", no_class, "--out", out))
    assert not out.exists()


# --- a killed run's staging folder is removed by the next run into --out, a live one's never ---------------

LINKER = """
import sys, time
from pathlib import Path
real_link = Path.symlink_to
def link_then_block(self, target, *args, **kwargs):  # one image linked, then stopped there
    real_link(self, target, *args, **kwargs)
    print(self, flush=True)
    time.sleep(600)
Path.symlink_to = link_then_block
from adarem.data.imagenet_layout import build_val_layout
build_val_layout(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_and_a_live_ones_is_not(tmp_path):
    root = _tree(tmp_path / "inet", flat_val=True)
    labels = _write_labels(tmp_path / "labels.txt", VAL_ROWS)
    out = tmp_path / "val_by_class"
    argv = [root / "val", labels, out]
    with writers(LINKER, argv, argv) as (killed, live):
        killed_dir, live_dir = staging_of(killed, out), staging_of(live, out)
        kill9(killed)
        assert not out.exists() and [p.is_symlink() for p in killed_dir.rglob("*.JPEG")] == [True]
        res = run(root, "--val-labels", labels, "--out", out)
        assert res.returncode == 0, res.stderr
        assert not killed_dir.exists() and live_dir.is_dir() and live.poll() is None
        assert stagings(out) == [live_dir]
        assert sorted(p.name for p in out.iterdir()) == ["n01440764", "n01443537"]  # no marker inside out/
        assert len(list(out.rglob("*.JPEG"))) == 3
    assert sorted(p.name for p in (root / "val").iterdir()) == [n for n, _ in VAL_ROWS]  # originals untouched


def test_a_run_whose_staging_folder_was_taken_over_fails_in_one_line_and_makes_no_out(tmp_path, monkeypatch):
    from pathlib import Path

    root = _tree(tmp_path / "inet", flat_val=True)
    labels = _write_labels(tmp_path / "labels.txt", VAL_ROWS)
    out = tmp_path / "val_by_class"
    real_link, taken = Path.symlink_to, []

    def link_then_taken_over(self, target, *args, **kwargs):  # midway, another writer takes the folder over
        real_link(self, target, *args, **kwargs)
        if not taken:
            taken.append(take_over(out))

    monkeypatch.setattr(Path, "symlink_to", link_then_taken_over)
    err = _one_error_line(run(root, "--val-labels", labels, "--out", out))
    assert "removed or replaced by another process" in err
    assert not out.exists() and len(list(taken[0].rglob("*.JPEG"))) == 3
