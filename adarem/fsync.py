"""Durability helpers shared by the checkpoint writer, the optimizer's kernel cache and the tools
that build a directory all or nothing (torch-free, so that the optimizer-only install can use
them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(path) -> None:
    """Make a rename inside ``path`` durable: without it a crash can leave the old directory entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src, dst) -> None:
    """``os.replace(src, dst)`` with ``src``'s data on disk before the rename and the rename on disk
    after it: a crash leaves either the old ``dst`` or the complete new one."""
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


@contextlib.contextmanager
def staged_directory(dest: Path):
    """A new hidden sibling of ``dest`` to fill, renamed to ``dest`` when the block ends without an
    exception and removed when it raises: a stopped run (disk full, Ctrl-C) never leaves a
    half-made ``dest`` that a later run takes for a complete one. A plain mkdir: the directory gets
    the umask's mode (mkdtemp's 0700 would hide it from a group). An empty ``dest`` is replaced
    (POSIX rename); a non-empty one makes the rename fail."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
