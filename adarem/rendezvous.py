"""The start-up meeting of DDP ranks launched outside torchrun (srun tasks, RANK/WORLD_SIZE set by hand).

init_process_group on its own waits for its 30-minute collective timeout whenever the ranks do not
all come: ``srun -n4 --pty bash`` runs only task 0's shell, a task dies while importing, a RANK is
given twice. Here the ranks meet in rank 0's c10d store within ``trainer.start_timeout_s``, or every
one of them ends with one line that says why. Under torchrun its agent has met the ranks already
(its own ``--rdzv-conf join_timeout``); this is not used there.

The protocol, every key under ``adarem/rendezvous/<SLURM job id>`` (a rank of another job that
reaches this store, on a port shared on one node, meets nobody; ranks started by separate srun
calls of one job meet):

1. each rank claims its slot ``rank/<r>`` and the job's ``world`` (compare_set): a RANK started
   twice, or WORLD_SIZE differing between ranks, ends the launch;
2. each rank adds itself to ``arrived``; once every rank has arrived, each confirms it is still
   there (``confirmed``), and the rank whose confirmation completes the count decides ``go``. A
   rank that arrived and then died (killed, out of memory) never confirms, and the others end
   after CONFIRM_S instead of following "go" into init_process_group to wait for it;
3. the decision is made once, in ``state`` (compare_set): ``go``, or ``abort:<why>:<rank>`` by the
   first rank to give up (its timeout, a stop signal, an error). A rank that finds "go" goes on
   even if its own time ran out; one that finds "abort" ends with the reason: a stop signal
   (a preemption reaches every rank) ends every rank with ``StartStopped`` (exit 75, requeue),
   whichever rank wrote it;
4. rank 0, whose process serves the store, waits a moment on an abort for the others to read it,
   so that they say why instead of "store went away".
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid

import torch.distributed as dist

POLL_S = 0.05  # how often a waiting rank looks at the meeting (and at its stop flag): local store calls
CONFIRM_S = 30.0  # once every rank arrived: how long each has to confirm it is still there
READ_S = 2.0  # rank 0, on an abort: how long it keeps the store up for the others to read why
ADVICE = ("start every rank (one srun task each, not an `srun --pty` shell; or torchrun), check "
          "MASTER_ADDR/MASTER_PORT, or raise trainer.start_timeout_s")


class StartStopped(RuntimeError):
    """A stop signal (a preemption, scancel) came while the ranks were meeting at start-up:
    nothing trained, and the launch ends with the requeue exit code."""


def _config_error(message: str) -> Exception:
    from adarem.config import ConfigError

    return ConfigError(message)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _wait_for_listener(addr: str, port: int, rank: int, world: int, timeout_s: float, deadline: float,
                       stopped) -> None:
    """Until something accepts TCP connections at addr:port (rank 0's store), within the deadline.
    A plain socket first: TCPStore's constructor retries after a random delay of up to its whole
    timeout, which outlived the deadline and was then taken for "another service on the port"."""
    while True:
        if stopped():
            raise StartStopped(f"rank {rank} was stopped by a signal while waiting for rank 0 at {addr}:{port}")
        try:
            with socket.create_connection((addr, port), timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise _config_error(f"rank {rank} could not reach rank 0 at {addr}:{port} within {timeout_s:g} s of "
                                    f"WORLD_SIZE={world} ({exc.strerror or exc}): {ADVICE}") from None
        time.sleep(POLL_S)


def _open_store(addr: str, port: int, rank: int, world: int, timeout_s: float, deadline: float,
                stopped) -> dist.Store:
    """This rank's connection to the job's store (rank 0 also serves it). Made in a helper thread
    with a bounded wait: a client that reaches a listener which accepts but is no c10d store
    (another service on the port) blocks in the constructor for good."""
    if rank != 0:
        _wait_for_listener(addr, port, rank, world, timeout_s, deadline, stopped)
    limit = max(1.0, min(60.0, deadline - time.monotonic()))
    box: dict = {}

    def connect() -> None:
        try:
            box["store"] = dist.TCPStore(addr, port, None, rank == 0, dt.timedelta(seconds=limit),
                                         wait_for_workers=False)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread)
            box["error"] = exc

    thread = threading.Thread(target=connect, name="adarem-rendezvous", daemon=True)
    thread.start()
    until = time.monotonic() + limit + 5
    while thread.is_alive() and time.monotonic() < until:
        if stopped():
            raise StartStopped(f"rank {rank} was stopped by a signal while opening the store at {addr}:{port}")
        thread.join(POLL_S)
    if thread.is_alive():
        raise _config_error(f"rank {rank}: what listens at {addr}:{port} accepted the connection but did not answer "
                            f"as rank 0's c10d store (another service on that port?): set MASTER_PORT to a free port")
    if "error" in box:
        exc = box["error"]
        if rank == 0 and "EADDRINUSE" in str(exc):
            raise _config_error(f"rank 0 of WORLD_SIZE={world} could not listen at {addr}:{port} ({_first_line(exc)}): "
                                f"another process (another job on this node?) has the port; set MASTER_PORT")
        if rank == 0:
            raise _config_error(f"rank 0 of WORLD_SIZE={world} could not open the store at {addr}:{port} "
                                f"({_first_line(exc)}): MASTER_ADDR must name rank 0's host")
        raise _config_error(f"rank {rank} could not connect to rank 0's store at {addr}:{port} ({_first_line(exc)}): "
                            f"{ADVICE}")
    return box["store"]


class _Meeting:
    """One rank's side of the meeting, on the store's keys of this job."""

    def __init__(self, store: dist.Store, rank: int, world: int, where: str, timeout_s: float):
        self.keys = dist.PrefixStore(f"adarem/rendezvous/{_job()}", store)
        self.rank, self.world, self.where, self.timeout_s = rank, world, where, timeout_s

    def claim(self) -> None:
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        held = self.keys.compare_set(f"rank/{self.rank}", "", token).decode()
        if held != token:
            host, pid = (held.split(":") + ["?", "?"])[:2]
            self.decide_quietly(f"abort:twice:{self.rank}:{os.getpid()}")
            raise _config_error(f"RANK={self.rank} was started twice (process {pid} on {host} holds it at {self.where}): "
                                f"give each process of the launch its own RANK, or start them with srun or torchrun")
        agreed = self.keys.compare_set("world", "", str(self.world)).decode()
        if agreed != str(self.world):
            self.decide_quietly(f"abort:world:{self.rank}:{self.world}")
            raise _config_error(f"WORLD_SIZE differs between the ranks meeting at {self.where}: {self.world} for rank "
                                f"{self.rank}, {agreed} for a rank before it; give every rank the same")

    def state(self) -> str:
        return self.keys.get("state").decode() if self.keys.check(["state"]) else ""

    def decide(self, value: str) -> str:
        """The meeting's decision: ``value`` if none was made, else the one made before."""
        return self.keys.compare_set("state", "", value).decode()

    def decide_quietly(self, value: str) -> None:
        """``decide`` on the way out of an error: the store may be gone, and the error says why."""
        try:
            self.decide(value)
        except Exception:  # noqa: BLE001
            pass

    def count(self, key: str) -> int:
        return self.keys.add(key, 0)

    def missing(self, key: str) -> list[int]:
        return [r for r in range(self.world) if not self.keys.check([f"{key}/{r}"])]

    def mark(self, key: str) -> int:
        self.keys.set(f"{key}/{self.rank}", "1")
        return self.keys.add(key, 1)

    def ended(self, decision: str) -> Exception:
        """What this rank raises for an abort decision, once rank 0 has let the others read it."""
        _, why, by, detail = (decision.split(":") + ["", "", "", ""])[:4]
        if self.rank == 0:  # this process serves the store: let the others read why before it goes
            until = time.monotonic() + READ_S
            while self.count("read") < self.count("arrived") - 1 and time.monotonic() < until:
                time.sleep(POLL_S / 4)
        else:
            self.keys.add("read", 1)
        if why == "stop":
            who = f"rank {self.rank}" if by == str(self.rank) else f"rank {self.rank}: rank {by}"
            return StartStopped(f"{who} was stopped by a signal while the ranks met at {self.where}")
        if why == "timeout":  # detail: the ranks missing when it was decided
            missing = detail.split("-") if detail else []
            return _config_error(f"rank {self.rank}: {self.world - len(missing)} of WORLD_SIZE={self.world} ranks met "
                                 f"at {self.where} within {self.timeout_s:g} s (missing: rank "
                                 f"{', '.join(missing) or '?'}{'' if by == str(self.rank) else f'; rank {by} gave up'}): "
                                 f"{ADVICE}")
        if why == "confirm":
            return _config_error(f"rank {self.rank}: rank {', '.join(map(str, self.missing('confirmed'))) or '?'} "
                                 f"arrived at {self.where} and then stopped answering (killed? out of memory?) "
                                 f"before the ranks could start; see its error")
        if why == "twice":
            return _config_error(f"rank {self.rank}: a second process was given RANK={by} (pid {detail}) and refused at "
                                 f"{self.where}; give each process of the launch its own RANK")
        if why == "world":
            return _config_error(f"rank {self.rank}: rank {by} was given WORLD_SIZE={detail}, not {self.world}, at "
                                 f"{self.where}; give every rank the same WORLD_SIZE")
        return _config_error(f"rank {self.rank}: rank {by} failed while the ranks met at {self.where}; see its error")


def rendezvous(rank: int, world: int, timeout_s: float, stopped=lambda: False) -> dist.Store:
    """The ranks meet at MASTER_ADDR:MASTER_PORT within ``timeout_s`` (see the module's docstring);
    returns the store for init_process_group, or raises ConfigError / StartStopped with one line.
    ``stopped``: whether a stop signal has come (the run's StopFlag)."""
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 29500))
    where = f"{addr}:{port}"
    if not 0 <= rank < world:
        raise _config_error(f"RANK={rank} is not in [0, WORLD_SIZE={world}); give each rank a number below WORLD_SIZE")
    deadline = time.monotonic() + timeout_s
    store = _open_store(addr, port, rank, world, timeout_s, deadline, stopped)
    meet = _Meeting(store, rank, world, where, timeout_s)
    decision = ""
    try:
        meet.claim()
        if time.monotonic() < deadline:
            meet.mark("arrived")
        everyone_since = None
        while True:
            # one's own stop first: under a preemption every rank is signalled, and each must end
            # in "requeue", whichever wrote the decision
            if stopped():
                decision = meet.decide(f"abort:stop:{rank}")
            else:
                decision = meet.state()
            if decision == "go":
                break
            if decision:
                raise meet.ended(decision)
            now = time.monotonic()
            if everyone_since is None and meet.count("arrived") >= world:
                everyone_since = now
                if meet.mark("confirmed") == world:
                    meet.decide("go")
                    continue
            if everyone_since is not None and now - everyone_since > CONFIRM_S:
                decision = meet.decide(f"abort:confirm:{rank}")
            elif everyone_since is None and now >= deadline:
                missing = meet.missing("arrived")  # read before deciding: the last may just have come
                if missing:
                    decision = meet.decide(f"abort:timeout:{rank}:{'-'.join(map(str, missing))}")
            if decision:
                continue  # "go" made meanwhile, or this abort: read and acted on at the top
            time.sleep(POLL_S)
    except (StartStopped, ValueError):  # the meeting's own outcome (ConfigError is a ValueError); a
        raise  # refused claim has written its own decision
    except RuntimeError as exc:  # DistStoreError / DistNetworkError: rank 0, the store's server, is gone
        raise _config_error(f"rank {rank}: rank 0's store at {where} went away while the ranks met "
                            f"({_first_line(exc)}): rank 0 ended; see its error") from None
    except BaseException:  # Ctrl-C, anything else: the others must not go on without this rank
        if decision != "go":
            meet.decide_quietly(f"abort:error:{rank}")
        raise
    # the store now serves the process group, whose collectives and barriers keep the 30 minutes
    store.set_timeout(dt.timedelta(minutes=30))
    return dist.PrefixStore(f"adarem/pg/{_job()}", store)


def _job() -> str:
    """The key of this launch's meeting: its SLURM job (not the step: ranks started by separate
    srun calls, one task each, have other step ids; helper-91). Every launch has a store of its
    own, so the job alone tells a rank of another job on the same port from this one's."""
    return os.environ.get("SLURM_JOB_ID", "")

