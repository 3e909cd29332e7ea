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
