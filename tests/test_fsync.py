"""adarem.fsync's staging folders: a directory built all or nothing, in a hidden sibling whose
writer a marker names, so that the next writer into the same destination removes the folder of one
killed midway (kill -9), never a live writer's, and a writer whose folder was taken over moves
nothing into place.

The helpers below start real writer processes for the tests of each user of the mechanism
(tests/results/test_export.py, test_wandb_runs.py, tests/data/test_prepare_imagenet.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adarem import fsync
from tests.conftest import REPO

DAY = 24 * 3600


def stagings(dest) -> list[Path]:
    """The staging folders of ``dest`` there are now."""
    dest = Path(dest)
    return sorted(dest.parent.glob(f".{dest.name}.staging-*"))


@contextlib.contextmanager
def writers(code: str, *argvs):
    """One writer process per argv, each running ``code`` (``sys.argv[1:]`` = the argv), which
    prints a path inside its staging folder once it writes there and then blocks; yields the
    processes. Started together (their imports overlap); every one still running is killed at the
    end."""
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True) for argv in argvs]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            proc.stdout.close()


def staging_of(proc, dest) -> Path:
    """The staging folder a writer of ``writers`` writes in (waits until it does)."""
    line = proc.stdout.readline().strip()
    assert line, f"the writer did not get into its staging folder (exit status {proc.wait(timeout=30)})"
    folder = next(p for p in Path(line).parents if p.parent == Path(dest).parent)
    assert folder in stagings(dest) and (folder / fsync.WRITER_MARKER).is_file(), folder
    return folder


def kill9(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def take_over(dest) -> Path:
    """Replace the marker of ``dest``'s (only) staging folder with another writer's (a writer of
    another machine that judged this one dead, say); returns the folder."""
    (folder,) = stagings(dest)
    (folder / fsync.WRITER_MARKER).write_text(json.dumps({"host": socket.gethostname() + "-other", "pid": 1}))
    return folder


def assert_one_line_not_ours(exc, dest) -> None:
    text = str(exc.value)
    assert "removed or replaced by another process" in text and str(dest) in text and "\n" not in text, text


WRITER = """
import sys, time
from pathlib import Path
from adarem.fsync import staged_directory
assert "torch" not in sys.modules  # the optimizer-only install imports adarem.fsync
with staged_directory(Path(sys.argv[1])) as d:
    (d / "half").mkdir()
    (d / "half" / "made").write_text("half a tree")
    print(d / "half" / "made", flush=True)
    time.sleep(600)
"""


def _hand_made(parent: Path, name: str, marker=None, age=None) -> Path:
    d = parent / name
    (d / "content" / "sub").mkdir(parents=True)
    (d / "content" / "sub" / "file").write_text("x")
    if marker is not None:
        (d / fsync.WRITER_MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    if age is not None:
        for p in sorted(d.rglob("*"), reverse=True) + [d]:
            os.utime(p, (age, age), follow_symlinks=False)
    return d


def test_a_killed_writers_folder_is_removed_by_the_next_writer_and_a_live_ones_never(tmp_path):
    dest = tmp_path / "tree"
    with writers(WRITER, [dest], [dest]) as (killed, live):
        killed_dir, live_dir = staging_of(killed, dest), staging_of(live, dest)
        kill9(killed)
        assert (killed_dir / "content" / "half" / "made").is_file()  # what kill -9 leaves
        old = time.time() - 2 * DAY
        other_host = {"host": socket.gethostname() + "-other", "pid": 1}
        unmarked_new = _hand_made(tmp_path, ".tree.staging-unmark01")  # between its mkdir and its marker
        unmarked_old = _hand_made(tmp_path, ".tree.staging-unmark02", age=old)
        torn_old = _hand_made(tmp_path, ".tree.staging-torn0001", marker='{"host": "x", "pi', age=old)
        other_new = _hand_made(tmp_path, ".tree.staging-otherh01", other_host)
        other_old = _hand_made(tmp_path, ".tree.staging-otherh02", other_host, age=old)
        # another machine's writer that still adds entries deep down: its top folder is old
        other_busy = _hand_made(tmp_path, ".tree.staging-otherh03", other_host, age=old)
        os.utime(other_busy / "content" / "sub")
        # ... and one that only appends to a file: every folder of it is old
        other_appending = _hand_made(tmp_path, ".tree.staging-otherh04", other_host, age=old)
        os.utime(other_appending / "content" / "sub" / "file")
        # what is not exactly a staging folder of tree is never touched, dead or not
        dead = json.loads((killed_dir / fsync.WRITER_MARKER).read_text())
        left_alone = [_hand_made(tmp_path, name, dead, age=old) for name in
                      (".tree.staging-old-copy", ".tree.staging-abcdefghi", ".tree.1234abcd", ".tree2.staging-abcdefgh",
                       "tree.staging-abcdefgh", ".tree.old.1234abcd")]
        elsewhere = _hand_made(tmp_path / "elsewhere", "x", dead, age=old)
        (tmp_path / ".tree.staging-symlink1").symlink_to(elsewhere)
        (tmp_path / ".tree.staging-afile001").write_text(json.dumps(dead))

        with fsync.staged_directory(dest) as d:
            (d / "done").write_text("complete")
        assert sorted(p.name for p in dest.iterdir()) == ["done"]  # no marker inside dest

        assert not killed_dir.exists() and not unmarked_old.exists() and not torn_old.exists()
        assert not other_old.exists()
        assert (live_dir / "content" / "half" / "made").is_file() and live.poll() is None
        assert unmarked_new.is_dir() and other_new.is_dir() and other_busy.is_dir() and other_appending.is_dir()
        assert all((p / "content" / "sub" / "file").is_file() for p in left_alone + [elsewhere])
        assert (tmp_path / ".tree.staging-symlink1").is_symlink() and (tmp_path / ".tree.staging-afile001").is_file()
        assert fsync.remove_dead_stagings(dest) == []  # nothing more is dead
    # the live writer, killed in its turn, is a dead one for the next writer
    assert fsync.remove_dead_stagings(dest) == [live_dir]


def test_the_final_rename_fails_in_one_line_when_the_folder_was_taken_over_and_dest_is_untouched(tmp_path):
    dest = tmp_path / "tree"
    with pytest.raises(OSError) as exc:
        with fsync.staged_directory(dest) as d:
            (d / "new").write_text("new")
            folder = take_over(dest)
    assert_one_line_not_ours(exc, dest)
    assert not dest.exists()
    assert (folder / "content" / "new").is_file()  # another writer's now: not removed by this one

    dest = tmp_path / "replaced"
    (dest / "old").mkdir(parents=True)
    with pytest.raises(OSError) as exc:
        with fsync.staged_directory(dest, replace=True) as d:
            (d / "new").write_text("new")
            take_over(dest)
    assert_one_line_not_ours(exc, dest)
    assert [p.name for p in dest.iterdir()] == ["old"]

    dest = tmp_path / "gone"  # removed altogether (another writer judged this one dead)
    with pytest.raises(OSError) as exc:
        with fsync.staged_directory(dest) as d:
            (d / "new").write_text("new")
            (folder,) = stagings(dest)
            os.rename(folder, tmp_path / "moved-away")
    assert_one_line_not_ours(exc, dest)
    assert not dest.exists()


REPLACING_WRITER = """
import os, sys, time
from pathlib import Path
from adarem.fsync import staged_directory
real_rename = os.rename
def rename_then_block(src, dst):  # the first rename moves the old dest aside; killed before the second
    real_rename(src, dst)
    print(dst, flush=True)
    time.sleep(600)
os.rename = rename_then_block
with staged_directory(Path(sys.argv[1]), replace=True) as d:
    (d / "new").write_text("new")
"""


def test_replace_swaps_dest_and_a_writer_killed_mid_swap_loses_no_dest(tmp_path):
    dest = tmp_path / "tree"
    (dest / "old").mkdir(parents=True)
    with writers(REPLACING_WRITER, [dest]) as (killed,):
        folder = staging_of(killed, dest)
        kill9(killed)
    # between the two renames: no dest, the old one inside the dead writer's staging folder
    assert not dest.exists() and (folder / fsync.REPLACED / "old").is_dir()
    # the next writer gives the old dest back before anything else: a failing next one loses nothing
    assert fsync.remove_dead_stagings(dest) == [folder]
    assert [p.name for p in dest.iterdir()] == ["old"]
    with fsync.staged_directory(dest, replace=True) as d:
        (d / "newer").write_text("newer")
    assert [p.name for p in dest.iterdir()] == ["newer"] and not folder.exists() and stagings(dest) == []
    with fsync.staged_directory(dest, replace=True) as d:  # over an existing dest
        (d / "newest").write_text("newest")
    assert [p.name for p in dest.iterdir()] == ["newest"] and stagings(dest) == []
    (tmp_path / "file").write_text("a user's file")
    with pytest.raises(FileExistsError):
        with fsync.staged_directory(tmp_path / "file", replace=True):
            pass
    assert (tmp_path / "file").read_text() == "a user's file" and stagings(tmp_path / "file") == []


def test_an_exception_removes_the_staging_folder_and_a_non_empty_dest_is_never_written_over(tmp_path):
    dest = tmp_path / "tree"
    with pytest.raises(KeyboardInterrupt):
        with fsync.staged_directory(dest) as d:
            (d / "half").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (dest / "keep").mkdir(parents=True)
    with pytest.raises(OSError):
        with fsync.staged_directory(dest) as d:
            (d / "new").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["keep"] and stagings(dest) == []


def test_replace_works_from_a_working_directory_inside_dest(tmp_path, monkeypatch):
    """A relative dest named from inside it (cd out/wandb_runs; --out ..): the swap moves the working
    directory aside, so every later relative path pointed elsewhere; the rename and its rollback
    failed and both downloads were lost. dest is made absolute first."""
    dest = tmp_path / "out" / "tree"
    (dest / "old").mkdir(parents=True)
    monkeypatch.chdir(dest / "old")
    with fsync.staged_directory(Path("../../tree"), replace=True) as d:
        (d / "new").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new"] and stagings(dest) == []
