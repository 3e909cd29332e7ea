"""Durability helpers shared by the checkpoint writer and the optimizer's kernel cache (torch-free,
so that the optimizer-only install can use them)."""

from __future__ import annotations

import os


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
