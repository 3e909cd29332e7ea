"""Preemption: SIGTERM / SIGUSR1 ask the trainer to checkpoint and exit with REQUEUE_EXIT_CODE.

SLURM sends the signal (``#SBATCH --signal=USR1@120``) some time before the limit; the handler
only sets a flag, and the training loop checks it after every step. Under DDP the flag is
all-reduced, so every rank stops after the same step even if the signal reached them apart.
"""

from __future__ import annotations

import signal

import torch

from adarem import distributed as dist_utils

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again" (sysexits.h)


class StopFlag:
    def __init__(self, distributed: bool = False, device: torch.device = torch.device("cpu")):
        self.signal_name: str | None = None
        self.distributed = distributed
        self.device = device

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def uninstall(self) -> None:
        """Give the signals back (compare.py runs many trainings in one worker process, which must
        still die on the SIGTERM of its pool)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested_anywhere(self) -> bool:
        return self.poll(False)[0]

    def poll(self, checkpoint_due: bool) -> tuple[bool, bool]:
        """(stop requested, timed checkpoint due), agreed by all ranks in one all-reduce, so that
        every rank stops or checkpoints after the same step (clocks and signals differ)."""
        local = self.signal_name is not None
        if not self.distributed:
            return local, checkpoint_due
        flags = torch.tensor([float(local), float(checkpoint_due)], device=self.device)
        dist_utils.all_reduce_max(flags)
        stop, due = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
        if stop and self.signal_name is None:
            self.signal_name = "peer"
        return stop, due
