"""Ends a DDP rank whose peers have gone, where its collective would wait for them for 30 minutes.

Under gloo a collective fails at once when another rank has ended (``adarem.distributed.PeerLost``).
Under NCCL it does not: the surviving ranks wait in their next collective until the process group's
timeout (30 min), then NCCL's watchdog aborts them, and run.json stays ``running``. ``PeerWatch``
is a background thread on every rank that talks through the job's c10d store (the rendezvous store
at MASTER_ADDR:MASTER_PORT, served by rank 0 or by torchrun's agent) rather than through the
process group, so it is not blocked by a collective:

* every ``beat_s`` each rank adds one to its heartbeat counter;
* a rank that fails says so first (``end(failed=True, cause=...)``: the first cause is kept,
  compare-and-set);
* rank 0 watches every rank's heartbeat, and the others watch rank 0's: a counter that has not
  moved for ``timeout_s`` (a rank SIGKILLed by the out-of-memory killer, a hung node) is a failure
  too, which the watcher records as that rank's;
* rank 0's store no longer answering (rank 0 killed) is rank 0's failure.

A rank that sees another rank's failure gives its own main thread ``grace_s`` to end by itself (under
gloo its collective has already failed, with the better message); after that the watch ends the
rank: ``on_lost(line)`` records it (rank 0: run.json ``failed``, naming the first rank's reason) and
the process exits with code 2. Where rank 0's store has gone before this rank read the cause,
``cause()`` gives it (the ranks' error files in the run directory), if it can.
``end()`` (the main thread's ending, however the run ended) stops the watch and marks the rank
done; after a normal end rank 0 waits (up to ``linger_s``) for the others to be done before its
store goes with it, so that no rank mistakes a finished job for a lost rank 0.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
import uuid
from typing import Callable, Optional

import torch.distributed as dist

EXIT_CODE = 2  # as train.py's other one-line errors
_FIRST = "failed"  # "rank r: <error>" of the first rank that failed (or was found silent)


def said_by(first: str) -> str:
    """"rank r: <error>" -> "rank r failed first (<error>)" (the wording of adarem.distributed.PeerLost)."""
    return first.replace(": ", " failed first (", 1) + ")"


class PeerWatch:
    def __init__(self, store: dist.Store, rank: int, world: int, timeout_s: float,
                 on_lost: Callable[[str], None], cause: Callable[[], Optional[str]] = lambda: None,
                 beat_s: Optional[float] = None, grace_s: Optional[float] = None, linger_s: Optional[float] = None,
                 exit: Callable[[int], None] = os._exit):
        self.store, self.rank, self.world, self.timeout_s = store, rank, world, timeout_s
        self.beat_s = beat_s if beat_s is not None else min(5.0, timeout_s / 4)
        self.grace_s = grace_s if grace_s is not None else 2 * self.beat_s
        # how long rank 0, done, waits for the others to be done too (they passed the last collective
        # with it: normally a moment)
        self.linger_s = linger_s if linger_s is not None else 30.0
        self.on_lost, self.cause, self._exit = on_lost, cause, exit
        self._lock = threading.Lock()  # held by whichever ends the rank: the main thread or the watch
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adarem-peer-watch", daemon=True)

    @classmethod
    def for_job(cls, rank: int, world: int, timeout_s: float, on_lost: Callable[[str], None],
                cause: Callable[[], Optional[str]]) -> "PeerWatch":
        """A started watch on the job's store (after init_process_group, on every rank at once: it
        broadcasts rank 0's key prefix, so that torchrun's restarts, which share one store, never
        read a previous attempt's keys)."""
        from adarem.distributed import broadcast_object

        prefix = broadcast_object(uuid.uuid4().hex if rank == 0 else None)
        # a client of its own, with a short timeout: a store call must not wait 30 min for a lost host
        client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, False,
                               dt.timedelta(seconds=max(10.0, min(60.0, timeout_s))))
        watch = cls(dist.PrefixStore(f"adarem/peer-watch/{prefix}", client), rank, world, timeout_s, on_lost, cause)
        watch.start()
        return watch

    def start(self) -> None:
        self.store.add(f"beat/{self.rank}", 1)
        self._thread.start()

    # ------------------------------------------------------------------ the main thread's side
    def end(self, failed: bool = False, cause: Optional[str] = None) -> None:
        """This rank is ending by itself: normally, or ``failed``; ``cause`` ("<Type>: <message>")
        when it failed on its own (not for a PeerLost: the rank that made it lose its peers is the
        cause). Blocks for good while the watch thread is ending the process. Idempotent; a no-op
        on the watch thread."""
        if threading.current_thread() is self._thread:
            return
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
        try:
            if cause is not None:
                self.store.compare_set(_FIRST, "", f"rank {self.rank}: {cause}")
            self.store.set(f"done/{self.rank}", "1")
            if self.rank == 0 and not failed and cause is None:
                self._linger()
        except (RuntimeError, ValueError):  # rank 0's store is gone (it ended or was killed): nothing to tell
            pass
        if self._thread.ident is not None:
            self._thread.join(timeout=self.beat_s + 1)

    def _linger(self) -> None:
        """Wait until the other ranks are done (they passed the last collective with this one),
        at most ``linger_s``, and not for one whose heartbeat stopped without it being done (killed
        meanwhile)."""
        pending = {r: (self.store.add(f"beat/{r}", 0), time.monotonic()) for r in range(1, self.world)}
        deadline = time.monotonic() + self.linger_s
        while pending and time.monotonic() < deadline:
            for r, (count, moved) in list(pending.items()):
                now, current = time.monotonic(), self.store.add(f"beat/{r}", 0)
                if self.store.check([f"done/{r}"]) or (current == count and now - moved > 2 * self.beat_s + 1):
                    del pending[r]
                elif current != count:
                    pending[r] = (current, now)
            time.sleep(min(0.2, self.beat_s))

    # ------------------------------------------------------------------ the watch thread
    def _loop(self) -> None:
        watched = range(1, self.world) if self.rank == 0 else (0,)
        beats = {r: (-1, time.monotonic()) for r in watched}  # rank -> (its counter, when it last moved)
        lost_since: Optional[float] = None
        while not self._ended.wait(self.beat_s):
            try:
                self.store.add(f"beat/{self.rank}", 1)
                first = self._first_failure()
                if first is None:
                    first = self._silent_rank(beats)
                    if first is not None:  # found here: no one else will end this rank
                        self._lost(first, grace=False)
                        return
            except (RuntimeError, ValueError):  # DistNetworkError / DistStoreError: the store is gone
                if self.rank == 0:  # its own store (or torchrun's agent) failing: not a peer's failure
                    continue
                lost_since = lost_since if lost_since is not None else time.monotonic()
                if time.monotonic() - lost_since < self.grace_s:  # a normal end of rank 0 races ours
                    continue
                first = self.cause() or ("rank 0: its store stopped answering: rank 0 was killed (the "
                                         "out-of-memory killer says nothing), crashed, or its node failed")
                self._lost(first, grace=False)
                return
            if first is not None:
                self._lost(first, grace=True)
                return

    def _first_failure(self) -> Optional[str]:
        if not self.store.check([_FIRST]):
            return None
        first = self.store.get(_FIRST).decode(errors="replace")
        return None if first.startswith(f"rank {self.rank}: ") else first

    def _silent_rank(self, beats: dict) -> Optional[str]:
        now = time.monotonic()
        for r, (count, moved) in beats.items():
            if self.store.check([f"done/{r}"]):
                continue
            current = self.store.add(f"beat/{r}", 0)
            if current != count:
                beats[r] = (current, now)
            elif now - moved > self.timeout_s:
                line = (f"rank {r}: no heartbeat for {now - moved:.0f} s (trainer.peer_timeout_s={self.timeout_s:g}): "
                        f"it was killed (the out-of-memory killer says nothing), or its process or node hung")
                self.store.compare_set(_FIRST, "", line)
                return self.store.get(_FIRST).decode(errors="replace")
        return None

    def _lost(self, first: str, grace: bool) -> None:
        """End this rank for ``first``, unless its main thread ends it within the grace period."""
        if grace and self._ended.wait(self.grace_s):
            return
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
            line = (f"rank {self.rank} stopped: {said_by(first)} [the peer watch ended it: a collective waits for a "
                    f"lost rank until the process group's timeout]")
            try:
                self.on_lost(line)
            finally:
                try:
                    self.store.set(f"done/{self.rank}", "1")
                except (RuntimeError, ValueError):
                    pass
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                self._exit(EXIT_CODE)
