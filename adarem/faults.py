"""Fault injection for the fault-tolerance tests: ``ADAREM_FAULT=<point>@<n>`` makes the process
SIGKILL itself at that point, as a node failure or the OOM killer would; ``<point>@<n>:TERM``
sends SIGTERM instead (a scheduler's preemption notice at an exact point). Unset, it costs one
string comparison. Points: ``step@N`` (after optimizer step N), ``epoch_end@E`` (right after
the end-of-epoch checkpoint of epoch E, before evaluation), ``eval@E`` (in the middle of
epoch E's first evaluation: a mid-epoch one when trainer.evals_per_epoch > 1), ``after_eval@E`` (right after epoch E's evaluation was logged),
``checkpoint_write@K`` (half-way through writing the K-th checkpoint), ``start@0`` (the end of
start-up, before the first step and before the run record is opened), ``dali_train_read@N`` and
``dali_val_read@N`` (the process that reads for the training or validation DALI pipeline, as it
reads its N-th sample: a DALI worker, the out-of-memory killer choosing a loader worker; train.py
itself with data.num_workers=0), ``dali_start@K`` (the K-th worker a DALI pipeline forks, as it
starts; a ``:TERM`` suffix does nothing to DALI's workers, which ignore SIGTERM so as to feed a
preempted run's last steps). Not kills: ``nan_loss@N``
and ``huge_loss@N`` (step N's loss becomes NaN, or a finite 1e30 beyond trainer.diverge_loss).
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("ADAREM_FAULT", "")
_POINT, _, _REST = _SPEC.partition("@")
_N, _, _SIGNAL = _REST.partition(":")


def poisoned(point: str, n: int) -> bool:
    """``ADAREM_FAULT=nan_loss@N`` (with ``ADAREM_FAULT_RANK=r``: on rank r only): True at that point."""
    if not _SPEC or point != _POINT or str(n) != _N:
        return False
    rank = os.environ.get("ADAREM_FAULT_RANK")
    return rank is None or rank == os.environ.get("RANK", "0")


def maybe_crash(point: str, n: int) -> None:
    """With ``ADAREM_FAULT_RANK=r``, on rank r only (a signal that reaches one rank of several)."""
    if _SPEC and point == _POINT and str(n) == _N and point not in ("nan_loss", "huge_loss"):
        rank = os.environ.get("ADAREM_FAULT_RANK")
        if rank is not None and rank != os.environ.get("RANK", "0"):
            return
        os.kill(os.getpid(), signal.Signals[f"SIG{_SIGNAL}"] if _SIGNAL else signal.SIGKILL)
