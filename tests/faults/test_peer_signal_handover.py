"""Under DDP, rank 0 hands submitit's signal to submitit's requeue handler (it requeues the job
from rank 0) also when only another rank received it: rank 0 then knows it as "peer", and the
all-reduced signal number (2907e56) names it. A stand-in handler notes its call."""

from __future__ import annotations

import signal

from adarem.run.signals import StopFlag


def _flag(own: str, agreed: str | None, calls: list) -> StopFlag:
    flag = StopFlag()
    flag.signal_name, flag.agreed_signal = own, agreed
    flag._submitit = (signal.SIGUSR2, lambda sig, frame: calls.append(sig))
    return flag


def test_submitits_signal_received_by_another_rank_only_is_handed_over():
    calls = []
    _flag("peer", "SIGUSR2", calls).hand_over()
    assert calls == [signal.SIGUSR2]


def test_another_signal_is_not_handed_over():
    calls = []
    _flag("peer", "SIGTERM", calls).hand_over()
    _flag("SIGTERM", None, calls).hand_over()
    assert calls == []
