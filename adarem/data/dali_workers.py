"""A DALI pipeline's Python workers, watched: a worker that dies while its pipeline is open (the
out-of-memory killer's SIGKILL, a crash) ends the pass with a DataError that names it, and the
pipeline is shut down without waiting on the dead worker.

Without this a run hung for good (DALI 2.4). The training thread, scheduling the next batch,
waited inside DALI's task queue for the dead worker to acknowledge a wake-up (a
``multiprocessing.Condition.notify`` that waits for its sleeper), or on a lock the worker held;
and closing the failed pipeline waited for DALI to ``terminate()`` the surviving workers, which
ignore SIGTERM (they inherit train.py's preemption handler, on purpose: a scheduler's SIGTERM
reaches every process of the job, and the workers must keep feeding the checkpoint). SIGTERM did
not end train.py either: its handler only asks for a checkpoint at the next step.

So each pipeline with workers gets a watch: a daemon thread waiting on the workers' pidfds. When
one ends, the watch records why (exit code or signal), and while the training thread is inside a
call into the pipeline (``guard``) it interrupts it with ``INTERRUPT``, a real-time signal sent to
that thread alone (a blocked semaphore wait returns EINTR and runs the handler, which raises),
again every ``KICK_S`` seconds until the thread has left. A death noticed between calls is raised
by the next call. The watch then ends the other workers with SIGKILL, so DALI's own observer,
which joins them, returns. A worker that dies while its pipeline starts, inside DALI's build (which
then waits for the others the same way), is seen by a StartupWatch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time

from adarem.data.datasets import DataError

# Not SIGTERM/SIGUSR1/SIGUSR2: those are preemption signals (SLURM, submitit)
INTERRUPT = signal.SIGRTMIN + 3
KICK_S = 2.0  # the interrupt is sent again while the training thread stays inside the pipeline
POLL_S = 0.5  # without pidfds (Linux < 5.3): how often the workers are looked at

_ACTIVE: "WorkerWatch | None" = None  # the watch whose guarded call the main thread is in
_installed = False


def _interrupt(signum, frame) -> None:  # in the main thread
    watch = _ACTIVE
    if watch is not None and watch.death is not None and watch.inside:
        watch.inside = False  # raised once per call: the guard's cleanup is not interrupted again
        watch.raised = True
        raise DataError(watch.death)


def _install() -> bool:
    """The INTERRUPT handler, installed on first use; only the main thread can install or get it."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _installed:
        signal.signal(INTERRUPT, _interrupt)
        _installed = True
    return True


def exit_reason(status: int | None = None, signo: int | None = None) -> str:
    """How a process ended, for a message: its exit status, or the signal that killed it."""
    if signo is not None:
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = "a signal"
        oom = ", as the out-of-memory killer does" if signo == signal.SIGKILL else ""
        return f"was killed by {name} (signal {signo}{oom})"
    if status is not None:
        return f"exited with code {status}"
    return "ended"


def waitid_reason(info) -> str:
    """exit_reason of os.waitid's answer for an ended process."""
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return exit_reason(signo=info.si_status)
    return exit_reason(status=info.si_status)


REMEDY = "if memory ran out, lower data.num_workers or data.dali_prefetch, or give the job more memory"


def kill_by_pidfds(pidfds) -> None:
    """SIGKILL each process of ``pidfds`` still running (a pidfd never names a process that took a
    reaped one's pid)."""
    for fd in pidfds:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass


class WorkerWatch:
    """Watches the worker processes ``pids`` of one DALI pipeline until ``stop()``."""

    def __init__(self, pids: list[int], what: str = "DALI", processes: dict | None = None):
        self.pids = list(pids)
        # pid -> multiprocessing.Process where the pool's are known: the exit code of a worker that
        # DALI's observer has already reaped
        self.processes = processes or {}
        self.what = what
        self.death: str | None = None  # why a worker ended, as the DataError says it
        self.raised = False  # the death was raised as a DataError (else stop() warns of it)
        self.inside = False  # the main thread is in a guarded call that INTERRUPT may end
        self._stop_r, self._stop_w = os.pipe()
        self._pidfds: dict[int, int] = {}
        for pid in self.pids:
            try:
                self._pidfds[os.pidfd_open(pid)] = pid
            except (AttributeError, OSError):  # no pidfd (old kernel), or the worker has already gone
                for fd in self._pidfds:
                    os.close(fd)
                self._pidfds.clear()
                break
        self._thread = threading.Thread(target=self._watch, name=f"{what} worker watch", daemon=True)
        self._thread.start()

    # -- the watching thread ------------------------------------------------------------------
    def _ended(self) -> tuple[int, str] | None:
        """A worker that has ended, and why; None while all run. Looked at without reaping it
        (WNOWAIT): DALI's observer reaps its workers."""
        targets = self._pidfds.items() if self._pidfds else [(pid, pid) for pid in self.pids]
        ended = []
        for target, pid in targets:
            try:
                info = os.waitid(os.P_PIDFD if self._pidfds else os.P_PID, target,
                                 os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # already reaped by DALI's observer, which has its exit code
                ended.append((pid, self._reaped_reason(pid)))
                continue
            if info is not None:
                ended.append((pid, waitid_reason(info)))
        return (ended or [None])[0]

    def _reaped_reason(self, pid: int) -> str:
        process = self.processes.get(pid)
        for _ in range(20):  # the observer sets the code right after reaping
            code = getattr(process, "exitcode", None)
            if code is not None:
                return exit_reason(signo=-code) if code < 0 else exit_reason(status=code)
            if process is None:
                break
            time.sleep(0.01)
        return exit_reason()

    def _wait(self, timeout: float | None, workers: bool = True) -> bool:
        """Wait for stop(), a worker's end (``workers``; without pidfds, POLL_S) or the timeout;
        True when stop() was called."""
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        if workers:
            for fd in self._pidfds:  # a dead worker's stays readable: not waited on after a death
                poller.register(fd, select.POLLIN)
            if not self._pidfds and timeout is None:
                timeout = POLL_S
        ready = [fd for fd, _ in poller.poll(None if timeout is None else int(timeout * 1000))]
        return self._stop_r in ready

    def _watch(self) -> None:
        try:
            while True:
                if self._wait(None):
                    return
                ended = self._ended()
                if ended is not None:
                    break
            self._note(*ended)
            self._kill_survivors()  # at once: whatever DALI does next may wait for them (module docstring)
            main = threading.main_thread().ident
            while True:
                if self.inside:
                    signal.pthread_kill(main, INTERRUPT)
                if self._wait(KICK_S, workers=False):
                    return
        except BaseException as exc:  # noqa: BLE001 - a watch that fails must say so, not go quiet
            self.death = self.death or f"the {self.what} worker watch failed ({type(exc).__name__}: {exc})"

    def _note(self, pid: int, reason: str) -> None:
        if self.death is None:
            self.death = (f"{self.what} worker process {pid} {reason}, and the data pipeline cannot go on "
                          f"without it; {REMEDY}")

    # -- the training thread ------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self):
        """Around a call into the pipeline (run, reset): a worker's death raises DataError, whether
        it happened before the call or during it (the call is interrupted)."""
        global _ACTIVE
        if self.death is not None:
            self.raised = True
            raise DataError(self.death)
        interruptible = _install()
        if interruptible:
            _ACTIVE, self.inside = self, True
        try:
            yield
        except Exception:
            if self.death is None and self._thread is not None:  # DALI's observer may have seen it first
                ended = self._ended()
                if ended is not None:
                    self._note(*ended)
            if self.death is not None:  # whatever DALI made of the interruption, or of the lost worker
                self.raised = True
                raise DataError(self.death) from None
            raise
        finally:
            if interruptible:
                self.inside, _ACTIVE = False, None

    def stop(self) -> None:
        """Stop watching, before the pipeline is closed (its workers then end on purpose). After a
        death the surviving workers are killed (SIGKILL; the watching thread did already, unless the
        death is seen only now): DALI's observer terminates them with SIGTERM, which they ignore,
        and joins them. Calling it again does nothing."""
        if self._thread is None:
            return
        self.inside = False
        os.write(self._stop_w, b"x")
        self._thread.join()
        self._thread = None
        ended = self._ended() if self.death is None else None  # died just now, before the thread saw it
        if ended is not None:
            self._note(*ended)
        if self.death is not None:
            self._kill_survivors()
            if not self.raised:  # the run ended otherwise (preempted, stopped): still said
                logging.getLogger(__name__).warning("%s (seen as the pipeline was closed)", self.death)
        for fd in (self._stop_r, self._stop_w, *self._pidfds):
            os.close(fd)

    def _kill_survivors(self) -> None:
        """SIGKILL every worker of the pipeline that still runs."""
        if self._pidfds:
            kill_by_pidfds(self._pidfds)
            return
        for pid in self.pids:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # still running
                    os.kill(pid, signal.SIGKILL)
            except (ChildProcessError, ProcessLookupError):
                pass


class StartupWatch:
    """Around a pipeline's build, which starts its workers: a worker that dies before the build
    returns makes this SIGKILL the others the build started (DALI's build terminates them with
    SIGTERM, which they ignore, and waits for them for good). ``death`` then says why; the build
    fails. The workers are found as they fork (``add_new_children``, called right after each fork
    by adarem.data.dali, so before anyone can reap them): the new pids among this thread's
    children (/proc/self/task/<tid>/children, Linux), each held by a pidfd, which identifies it
    even once DALI's observer has reaped it. Without /proc's children list or pidfds it watches
    nothing."""

    def __init__(self, what: str = "DALI"):
        self.what = what
        self.death: str | None = None
        self._list = f"/proc/self/task/{threading.get_native_id()}/children"  # the forking thread's
        self._before = self._children()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{what} worker start watch", daemon=True)

    def _children(self) -> set[int]:
        try:
            with open(self._list) as f:
                return {int(pid) for pid in f.read().split()}
        except (OSError, ValueError):
            return set()

    def add_new_children(self) -> None:
        for pid in self._children() - self._before - set(self._pidfds):
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pass

    def __enter__(self) -> "StartupWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        for fd in self._pidfds.values():
            os.close(fd)

    def _watch(self) -> None:
        while not self._done.wait(POLL_S / 20):
            for pid, fd in list(self._pidfds.items()):
                try:
                    info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:  # reaped by DALI's observer: it has ended
                    reason = exit_reason()
                else:
                    if info is None:
                        continue
                    reason = waitid_reason(info)
                self.death = f"{self.what} worker process {pid} {reason} while its pipeline was starting; {REMEDY}"
                kill_by_pidfds(self._pidfds.values())
                return
