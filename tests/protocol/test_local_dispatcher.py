"""The local launcher's worker processes do not outlive a compare that was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

CODE = """
import os, signal, sys, time
from adarem.protocol.dispatch import LocalDispatcher
with LocalDispatcher(workers=1, threads=1) as d:
    fut = d.pool.submit(time.sleep, 120)  # a trial still training
    while not d.pool._processes:
        time.sleep(0.05)
    time.sleep(1.0)
    print(*d.pool._processes, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # compare killed (OOM killer, scancel --signal=KILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie of an exited worker counts as gone
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_workers_exit_when_compare_is_killed():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    pids = [int(x) for x in out.stdout.split()]
    assert pids
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [p for p in pids if _alive(p)]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover, "a pool worker outlived its compare process"
