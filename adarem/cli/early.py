"""Signal handling for the seconds between a training process's first line and main().

Installed before the heavy imports (torch, timm, Hydra) by every way of starting a run
(``python train.py``, ``python -m adarem.cli.train``, ``adarem-train``): a preemption signal
(SIGTERM/SIGUSR1) that arrives while Python is still starting must end in "requeue me" (exit 75,
once train() has installed the real handlers and sees it recorded here), not in the default death
by signal (143/138); Ctrl-C in one line and exit 130, not in an import traceback. Standard library
only, and ``adarem`` and ``adarem.cli`` import nothing heavy, so that this is in place within
milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys

SIGNALS: list[str] = []  # names of the preemption signals received before train() took over
_installed = False


def ctrl_c_while_starting(signum, frame):
    print("interrupted (Ctrl-C) while starting, before any training step; nothing to resume", file=sys.stderr)
    os._exit(130)  # nothing is written yet; no half-imported module may catch an exception here


def submits_jobs(argv: list[str]) -> bool:
    """Whether this process is a sweep's submitter: a multirun (-m) whose Hydra launcher runs each
    job in a process of its own (hydra/launcher=slurm, or =local, submitit's local stand-in). It
    trains nothing; it waits for the jobs."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    launchers = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+~") == "hydra/launcher" and "=" in a]
    return multirun and bool(launchers) and launchers[-1] != "basic"


def install() -> None:
    """Record SIGTERM/SIGUSR1 for train(); Ctrl-C ends the process with one line (where SIGINT is
    not ignored: a shell's background jobs inherit it ignored, and that is left alone). Once.
    A sweep's submitter (``submits_jobs``) keeps the default SIGTERM/SIGUSR1: no train() of its
    own would read them, and recorded here they left it deaf to a SIGTERM while it waited (the
    jobs, on SLURM or in processes of their own, have their own handlers)."""
    global _installed
    if _installed:
        return
    _installed = True
    if not submits_jobs(sys.argv[1:]):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda signum, frame: SIGNALS.append(signal.Signals(signum).name))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, ctrl_c_while_starting)


def release_ctrl_c() -> None:
    """From main() on, Ctrl-C raises KeyboardInterrupt again (the run is marked interrupted)."""
    if signal.getsignal(signal.SIGINT) is ctrl_c_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
