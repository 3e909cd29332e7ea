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
* rank 0's store gone (rank 0 killed), or not answering for ``timeout_s`` (rank 0 hung: a store
  call to a stopped server never returns, whatever the client's timeout, so every call is made on
  a helper thread and waited for a bounded time), is rank 0's failure;
* a rank that finds itself named as the silent one (it had stalled, and the job has ended without
  it) ends as well.

A rank that sees another rank's failure gives its own main thread ``grace_s`` to end by itself (under
gloo its collective has already failed, with the better message); after that the watch ends the
rank: ``on_lost(line, first)`` records it (rank 0: run.json ``failed``, naming the first rank's
reason; a silent rank's cause is written as that rank's error file, where the other ranks look for
it once the store has gone) and the process exits with code 2. Where rank 0's store has gone before this rank read the cause,
``cause()`` gives it (the ranks' error files in the run directory), if it can.
``end()`` (the main thread's ending, however the run ended) stops the watch and marks the rank
done; after a normal end rank 0 waits (up to ``linger_s``) for the others to be done before its
store goes with it, so that no rank mistakes a finished job for a lost rank 0.

A watcher whose own loop was held up for several beats (the whole job suspended and resumed:
``scontrol suspend``, gang scheduling, a paused VM) starts its silence clocks again rather than
judge the others by a pause it shared.

Once the store's server has ended the watch makes no more calls: a call that finds it gone makes
c10d print a C++ stack dump, which an idle probe connection (end-of-file when the server ends)
avoids where the server's process ended; a call may still find it first in a race.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Optional

import torch.distributed as dist

from adarem.distributed import broadcast_object, failed_first

EXIT_CODE = 2  # as train.py's other one-line errors
_FIRST = "failed"  # "rank r: <error>" of the first rank that failed (or was found silent)
_NOT_HEARD = "no heartbeat for"  # the start of the cause a watcher records for a silent rank


class BoundedStore:
    """The watch's calls to the store, each on a helper thread waited for at most ``limit_s``: a
    TCPStore call to a server that is alive but stopped never returns. While a call is still
    stuck, no other is made; once the server has ended, none is.

    ``probe``, an idle TCP connection to the store's server, tells that the server has ended
    before a call would: its end shows as end-of-file there, and a store call that finds it
    instead makes c10d print a C++ stack dump before raising."""

    def __init__(self, store: dist.Store, limit_s: float, probe: Optional[socket.socket] = None):
        self.store, self.limit_s, self.probe = store, limit_s, probe
        self.gone = False
        self._stuck: Optional[threading.Thread] = None

    def _server_ended(self) -> bool:
        if self.probe is None:
            return False
        try:
            readable, _, _ = select.select([self.probe], [], [], 0)
            return bool(readable) and self.probe.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset
            return True

    def run(self, fn: Callable[[dist.Store], Any]) -> tuple[bool, Any]:
        """(True, fn(store)), or (False, None) when the store is gone or has not answered."""
        if not self.gone and self._server_ended():
            self.gone = True
        if self.gone or (self._stuck is not None and self._stuck.is_alive()):
            return False, None
        box: dict = {}

        def call() -> None:
            try:
                box["value"] = fn(self.store)
            except (RuntimeError, ValueError) as exc:  # DistNetworkError, DistStoreError
                box["error"] = exc

        thread = threading.Thread(target=call, name="adarem-peer-watch-store", daemon=True)
        thread.start()
        thread.join(self.limit_s)
        if thread.is_alive():
            self._stuck = thread
            return False, None
        self._stuck = None
        if "error" in box:
            self.gone = True
            return False, None
        return True, box.get("value")


class PeerWatch:
    def __init__(self, store: dist.Store, rank: int, world: int, timeout_s: float,
                 on_lost: Callable[[str, str], None], cause: Callable[[], Optional[str]] = lambda: None,
                 beat_s: Optional[float] = None, grace_s: Optional[float] = None, linger_s: Optional[float] = None,
                 exit: Callable[[int], None] = os._exit, probe: Optional[socket.socket] = None):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.beat_s = beat_s if beat_s is not None else min(5.0, timeout_s / 4)
        self.grace_s = grace_s if grace_s is not None else 2 * self.beat_s
        # how long rank 0, done, waits for the others to be done too (they passed the last collective
        # with it: normally a moment)
        self.linger_s = linger_s if linger_s is not None else 30.0
        self.store = BoundedStore(store, min(max(1.0, 2 * self.beat_s), timeout_s), probe)
        self.on_lost, self.cause, self._exit = on_lost, cause, exit
        self._lock = threading.Lock()  # held by whichever ends the rank: the main thread or the watch
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adarem-peer-watch", daemon=True)

    @classmethod
    def for_job(cls, rank: int, world: int, timeout_s: float, on_lost: Callable[[str, str], None],
                cause: Callable[[], Optional[str]]) -> "PeerWatch":
        """A started watch on the job's store (after init_process_group, on every rank at once: it
        broadcasts rank 0's key prefix, so that torchrun's restarts, which share one store, never
        read a previous attempt's keys)."""
        prefix = broadcast_object(uuid.uuid4().hex if rank == 0 else None)
        address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        client = dist.TCPStore(*address, None, False, dt.timedelta(seconds=max(10.0, min(60.0, timeout_s))))
        probe = socket.create_connection(address, timeout=10) if rank != 0 else None
        watch = cls(dist.PrefixStore(f"adarem/peer-watch/{prefix}", client), rank, world, timeout_s, on_lost, cause,
                    probe=probe)
        watch.start()
        return watch

    def start(self) -> None:
        self.store.run(lambda s: s.add(f"beat/{self.rank}", 1))
        self._thread.start()

    # ------------------------------------------------------------------ the main thread's side
    def end(self, failed: bool = False, cause: Optional[str] = None) -> None:
        """This rank is ending by itself: normally, or ``failed``; ``cause`` ("<Type>: <message>")
        when it failed on its own (not for a PeerLost: the rank that made it lose its peers is the
        cause, and the store may have gone with it). Blocks for good while the watch thread is
        ending the process. Idempotent; a no-op on the watch thread."""
        if threading.current_thread() is self._thread:
            return
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
        if cause is not None:
            self.store.run(lambda s: s.compare_set(_FIRST, "", f"rank {self.rank}: {cause}"))
        if not failed or cause is not None:
            ok, _ = self.store.run(lambda s: s.set(f"done/{self.rank}", "1"))
            if ok and self.rank == 0 and not failed:
                self._linger()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.beat_s + self.store.limit_s + 1)

    def _linger(self) -> None:
        """Wait until the other ranks are done (they passed the last collective with this one),
        at most ``linger_s``, and not for one whose heartbeat stopped without it being done (killed
        meanwhile)."""
        deadline = time.monotonic() + self.linger_s
        pending: dict[int, tuple[Optional[int], float]] = {r: (None, time.monotonic()) for r in range(1, self.world)}
        while pending and time.monotonic() < deadline:
            ok, seen = self.store.run(lambda s: self._read(s, list(pending)))
            if not ok:
                return
            now = time.monotonic()
            for r, count in seen.items():
                before, moved = pending[r]
                if count is None or (count == before and now - moved > 2 * self.beat_s + 1):
                    del pending[r]  # done, or silent since
                elif count != before:
                    pending[r] = (count, now)
            if pending:
                time.sleep(min(0.2, self.beat_s))

    # ------------------------------------------------------------------ the watch thread
    @staticmethod
    def _read(store: dist.Store, ranks: list[int]) -> dict[int, Optional[int]]:
        """Each rank's heartbeat count; None for a rank that is done."""
        return {r: None if store.check([f"done/{r}"]) else store.add(f"beat/{r}", 0) for r in ranks}

    def _poll(self, store: dist.Store, watched: list[int]) -> tuple[Optional[str], dict[int, Optional[int]]]:
        store.add(f"beat/{self.rank}", 1)
        first = store.get(_FIRST).decode(errors="replace") if store.check([_FIRST]) else None
        return first, self._read(store, watched)

    def _loop(self) -> None:
        watched = list(range(1, self.world)) if self.rank == 0 else [0]
        last = time.monotonic()
        # rank -> (its count: -1 not read yet, None done; when it last moved)
        heard: dict[int, tuple[Optional[int], float]] = {r: (-1, last) for r in watched}
        unanswered_since: Optional[float] = None
        while not self._ended.wait(self.beat_s):
            now = time.monotonic()
            if now - last > 3 * self.beat_s:  # this process was held up itself (the job suspended): start again
                heard = {r: (count, now) for r, (count, _) in heard.items()}
                unanswered_since = None if unanswered_since is None else now
            last = now
            ok, seen = self.store.run(lambda s: self._poll(s, watched))
            if not ok:
                if self.rank == 0:  # its own store (or torchrun's agent) failing: not a peer's failure
                    continue
                if self.store.gone and heard[0][0] is None:
                    return  # rank 0 had ended normally (done, no failure): its store went with it
                unanswered_since = unanswered_since if unanswered_since is not None else now
                if self.store.gone and now - unanswered_since >= self.grace_s:  # a normal end of rank 0 races it
                    self._lost(self.cause() or "rank 0: its store has gone: rank 0 was killed (the out-of-memory "
                                                "killer says nothing), crashed, or its node failed", grace=False)
                    return
                if not self.store.gone and now - unanswered_since >= self.timeout_s:
                    self._lost(f"rank 0: its store has not answered for {now - unanswered_since:.0f} s "
                               f"(trainer.peer_timeout_s={self.timeout_s:g}): rank 0 or its node hung, or it was "
                               f"stopped", grace=False)
                    return
                continue
            unanswered_since = None
            first, counts = seen
            if first is not None and first.startswith(f"rank {self.rank}: {_NOT_HEARD}"):
                self._accused(first)
                return
            if first is not None and not first.startswith(f"rank {self.rank}: "):
                self._lost(first, grace=True)
                return
            for r, count in counts.items():
                before, moved = heard[r]
                if count is None or count != before:
                    heard[r] = (count, now)
                elif now - moved > self.timeout_s:
                    line = (f"rank {r}: {_NOT_HEARD} {now - moved:.0f} s (trainer.peer_timeout_s={self.timeout_s:g}): it "
                            f"was killed (the out-of-memory killer says nothing), or its process or node hung")
                    ok, first = self.store.run(lambda s: (s.compare_set(_FIRST, "", line), s.get(_FIRST))[1])
                    self._lost(first.decode(errors="replace") if ok else line, grace=False)
                    return

    def _accused(self, first: str) -> None:
        """Another rank took this one for lost while it was held up (stopped, suspended alone,
        swapping) and has ended the job: end too, rather than wait in a collective for it."""
        detail = first.split(": ", 1)[1]
        self._end(f"rank {self.rank} stopped: another rank took it for lost ({detail.split(' (')[0]}: it had "
                  f"stalled) and has ended the job", first)

    def _lost(self, first: str, grace: bool) -> None:
        """End this rank for ``first``, unless its main thread ends it within the grace period."""
        if grace and self._ended.wait(self.grace_s):
            return
        self._end(f"rank {self.rank} stopped: {failed_first(first)} [the peer watch ended it: a collective waits for a "
                  f"lost rank until the process group's timeout]", first)

    def _end(self, line: str, first: str) -> None:
        with self._lock:
            if self._ended.is_set():
                return
            self._ended.set()
            try:
                self.on_lost(line, first)
            finally:
                self.store.run(lambda s: s.set(f"done/{self.rank}", "1"))
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                self._exit(EXIT_CODE)
