"""Preemption: SIGTERM / SIGUSR1 ask the trainer to checkpoint and exit with REQUEUE_EXIT_CODE.

SLURM sends the signal (``#SBATCH --signal=USR1@120``) some time before the limit; the handler
only sets a flag, and the training loop checks it after every step. Under DDP the flag is
all-reduced, so every rank stops after the same step even if the signal reached them apart.

Under submitit (``hydra/launcher=slurm``) the preemption signal is submitit's (SIGUSR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise), and submitit's own handler requeues the job and exits at
once. It is taken over like the others, so the run checkpoints its current step and records
``preempted`` first; ``hand_over`` then calls submitit's handler, which requeues the job.
"""

from __future__ import annotations

import os
import signal

import torch

from adarem import distributed as dist_utils

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again" (sysexits.h)


class StopFlag:
    def __init__(self, distributed: bool = False, device: torch.device = torch.device("cpu")):
        self.signal_name: str | None = None  # this rank's signal; "peer": another rank's only
        self.agreed_signal: str | None = None  # under DDP, a signal some rank received (what the record names)
        self.distributed = distributed
        self.device = device

    @property
    def recorded_signal(self) -> str | None:
        """The signal run.json names: this rank's, or, where only another rank received one (rank 0
        writes the record), that rank's, rather than "peer"."""
        if self.signal_name in (None, "peer") and self.agreed_signal is not None:
            return self.agreed_signal
        return self.signal_name

    def _local_code(self) -> float:
        """This rank's signal for the all-reduce (max): its number, 0.5 for one known only as
        "peer" (or not a signal's name), 0 for none."""
        if self.signal_name is None:
            return 0.0
        try:
            return float(signal.Signals[self.signal_name].value)
        except KeyError:
            return 0.5

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        self._submitit = None  # (signal, submitit's handler) when running inside a submitit job
        sig = submitit_signal()
        if sig is not None and sig not in self._previous and callable(signal.getsignal(sig)):
            self._previous[sig] = signal.signal(sig, self._handle)
            self._submitit = (sig, self._previous[sig])

    def uninstall(self) -> None:
        """Give the signals back (compare.py runs many trainings in one worker process, which must
        still die on the SIGTERM of its pool)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def hand_over(self) -> None:
        """Inside a submitit job stopped by submitit's signal: once the checkpoint is written, the
        run record says ``preempted`` and the run directory is unlocked, let submitit's handler
        requeue the job (on rank 0; it exits the process). Nothing otherwise."""
        # recorded_signal: under DDP, rank 0 (whose handler requeues) may know the signal only as
        # "peer", when another rank alone received it (2907e56 names it from the all-reduce)
        if self._submitit is not None and self.recorded_signal == signal.Signals(self._submitit[0]).name:
            sig, handler = self._submitit
            self._submitit = None
            handler(sig, None)

    def requested_anywhere(self) -> bool:
        return self.poll(False)[0]

    def poll(self, checkpoint_due: bool) -> tuple[bool, bool]:
        """(stop requested, timed checkpoint due), agreed by all ranks in one all-reduce, so that
        every rank stops or checkpoints after the same step (clocks and signals differ)."""
        local = self.signal_name is not None
        if not self.distributed:
            return local, checkpoint_due
        flags = torch.tensor([self._local_code(), float(checkpoint_due)], dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_max(flags)
        code, due = flags.tolist()
        stop = code > 0
        if stop and self.signal_name is None:
            self.signal_name = "peer"
        if code >= 1 and self.agreed_signal is None:
            self.agreed_signal = signal.Signals(int(code)).name
        return stop, due > 0


def submitit_signal() -> signal.Signals | None:
    """The signal submitit uses for preemption and timeouts, when this process is a submitit job."""
    if "SUBMITIT_FOLDER" not in os.environ:  # set by submitit in the job process it runs
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
