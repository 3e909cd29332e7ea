"""The exclusive lock files that keep two processes out of one place: a run directory
(``adarem.run.plan.RunLock``) and a comparison's setting in a runs folder
(``adarem.protocol.cli.hold_runs_folder``). An flock, which the kernel drops on any exit (kill -9
included); the file names its holder, for the refusal message. Torch-free: compare.py takes its
lock before anything heavy is imported."""

from __future__ import annotations

import fcntl
import os
import socket
from typing import Optional


def lock_or_holder(fd: int) -> Optional[str]:
    """An exclusive, non-blocking flock on the open lock file ``fd``, which then names this process
    (host, pid): None. Where another process holds it, that holder's name ("another process" where
    it wrote none), with ``fd`` closed. Any other error (a file system without locks) is raised,
    ``fd`` left to the caller."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
    return None
