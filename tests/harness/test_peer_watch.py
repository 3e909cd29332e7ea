"""adarem/run/peer_watch.py: two ranks' watches on one real c10d TCPStore, in one process, at a fast
beat (the end-to-end case, a rank stopped while the other waits in a gloo collective, is in
tests/faults/test_run_integrity.py)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from adarem.run.peer_watch import EXIT_CODE, PeerWatch
from tests.conftest import REPO

RANK_SCRIPT = Path(__file__).with_name("_watch_rank.py")

BEAT = 0.05
LINGER = 6.0  # rank 0's cap on waiting for the others at a normal end: far above what the tests
# expect (0.3 s, 1.1 s), so that a loaded machine (xdist beside torchrun tests) does not reach it


class Rank:
    """One rank's watch; what it would have done to its process is recorded instead."""

    def __init__(self, port: int, rank: int, world: int = 2, timeout_s: float = 1.0, cause=lambda: None):
        self.lines: list[str] = []
        self.exits: list[int] = []
        self.ended = threading.Event()
        client = dist.TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=5))
        self.firsts: list[str] = []
        self.watch = PeerWatch(dist.PrefixStore("test", client), rank, world, timeout_s, self._lost, cause,
                               beat_s=BEAT, grace_s=4 * BEAT, linger_s=LINGER, exit=self._exit)

    def _lost(self, line: str, first: str) -> None:
        self.lines.append(line)
        self.firsts.append(first)

    def _exit(self, code: int) -> None:
        self.exits.append(code)
        self.ended.set()


@pytest.fixture
def server():
    store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=5), wait_for_workers=False)
    yield store
    del store


def started(*ranks: Rank) -> tuple[Rank, ...]:
    for r in ranks:
        r.watch.start()
    return ranks


def test_a_rank_that_fails_ends_the_rank_waiting_for_it(server):
    r0, r1 = started(Rank(server.port, 0), Rank(server.port, 1))
    t0 = time.monotonic()
    r1.watch.end(True, "DataError: bad.jpg is not an image")
    assert r0.ended.wait(5), "rank 0 was never ended"
    assert time.monotonic() - t0 < 2
    assert r0.exits == [EXIT_CODE]
    assert r0.lines == ["rank 0 stopped: rank 1 failed first (DataError: bad.jpg is not an image) [the peer watch "
                        "ended it: a collective waits for a lost rank until the process group's timeout]"]
    assert r1.lines == [] and r1.exits == []


def test_a_rank_whose_main_thread_ends_within_the_grace_is_left_alone(server):
    r0, r1 = started(Rank(server.port, 0), Rank(server.port, 1))
    r1.watch.end(True, "DataError: bad")
    r0.watch.end(True)  # rank 0's own collective failed at once (gloo): a PeerLost, no cause
    time.sleep(10 * BEAT)
    assert r0.lines == [] and r0.exits == []


def test_a_silent_rank_is_found_and_named(server):
    r0 = Rank(server.port, 0, timeout_s=0.5)
    r1 = Rank(server.port, 1, timeout_s=0.5)
    started(r0)
    r1.watch.store.store.add("beat/1", 1)  # it started, then its process stopped: no thread beats for it
    t0 = time.monotonic()
    assert r0.ended.wait(5), "the silent rank was never found"
    assert 0.5 <= time.monotonic() - t0 < 4
    assert r0.lines[0].startswith("rank 0 stopped: rank 1 failed first (no heartbeat for 1 s "
                                  "(trainer.peer_timeout_s=0.5): it was killed")


def test_a_stopped_rank_0_is_found_by_the_others(server):
    r0 = Rank(server.port, 0, timeout_s=0.5)
    r1 = Rank(server.port, 1, timeout_s=0.5)
    r0.watch.store.store.add("beat/0", 1)
    started(r1)
    assert r1.ended.wait(5)
    assert r1.lines[0].startswith("rank 1 stopped: rank 0 failed first (no heartbeat")


def test_a_normal_end_ends_nobody_and_rank_0_waits_for_the_others(server):
    r0, r1, r2 = started(*(Rank(server.port, r, world=3) for r in range(3)))
    r1.watch.end()
    later = threading.Timer(0.3, r2.watch.end)
    later.start()
    t0 = time.monotonic()
    r0.watch.end()
    waited = time.monotonic() - t0
    assert 0.25 < waited < 3, waited  # until rank 2 was done, not the cap
    time.sleep(10 * BEAT)
    assert [r.lines for r in (r0, r1, r2)] == [[], [], []]


def test_rank_0_does_not_wait_for_a_rank_that_died_after_the_last_collective(server):
    r0, r1 = Rank(server.port, 0), Rank(server.port, 1)
    started(r0)
    r1.watch.store.store.add("beat/1", 1)  # its heartbeat stopped without it being done
    t0 = time.monotonic()
    r0.watch.end()
    assert time.monotonic() - t0 < 3  # 2 beats + 1 s of silence, not the cap


def test_rank_0s_store_gone_ends_the_others_with_the_cause_it_left(tmp_path):
    server = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=5), wait_for_workers=False)
    r1 = Rank(server.port, 1, cause=lambda: "rank 0: CheckpointError: disk full")
    started(r1)
    time.sleep(2 * BEAT)
    del server  # rank 0 ended (its error file names why) without the others having read it
    assert r1.ended.wait(5)
    assert r1.lines == ["rank 1 stopped: rank 0 failed first (CheckpointError: disk full) [the peer watch ended it: "
                        "a collective waits for a lost rank until the process group's timeout]"]


def test_the_first_cause_is_kept(server):
    r0, r1, r2 = (Rank(server.port, r, world=3) for r in range(3))
    r0.watch.store.store.add("beat/0", 1)
    r2.watch.end(True, "DataError: first")
    r1.watch.end(True, "OSError: second")
    started(r0)
    assert r0.ended.wait(5)
    assert "rank 2 failed first (DataError: first)" in r0.lines[0]


def test_a_rank_taken_for_lost_ends_when_it_comes_back(server):
    """Rank 1 stalled (its thread did not run) long enough for rank 0 to end the job without it;
    when it runs again it finds itself named and ends too, rather than wait in a collective."""
    r0 = Rank(server.port, 0, timeout_s=0.5)
    r1 = Rank(server.port, 1, timeout_s=0.5)
    started(r0)
    r1.watch.store.store.add("beat/1", 1)
    assert r0.ended.wait(5)
    r1.watch._thread.start()
    assert r1.ended.wait(5), "rank 1 kept waiting"
    assert r1.lines == ["rank 1 stopped: another rank took it for lost (no heartbeat for 1 s: it had stalled) and "
                        "has ended the job"]


def _rank_process(rank: int, port: int, timeout_s: float, beat_s: float, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RANK_SCRIPT), str(rank), "2", str(port), str(timeout_s), str(beat_s)],
                            cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _go(*ranks: subprocess.Popen) -> None:
    """Start the ranks' watches together, once each has connected (as after a rendezvous)."""
    for p in ranks:
        assert p.stdout.readline().strip() == "ready"
    for p in ranks:
        p.stdin.write("go\n")
        p.stdin.flush()


@pytest.fixture
def env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_a_hung_rank_0_is_found_although_its_store_never_answers(env):
    """Under an srun launch rank 0 serves the store: stopped (a hung node), it accepts calls and
    never answers them. Rank 1 ends after peer_timeout_s, and its own ending does not hang either."""
    host = _rank_process(0, 0, 60, 0.1, env)
    try:
        port = int(host.stdout.readline())
        other = _rank_process(1, port, 1.0, 0.1, env)
        client = dist.TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=5))  # for the end() below
        _go(host, other)
        time.sleep(1.0)  # both watching
        os.kill(host.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = other.communicate(timeout=30)
        assert other.returncode == EXIT_CODE, err
        assert time.monotonic() - t0 < 10
        assert "error: rank 1 stopped: rank 0 failed first (its store has not answered for 1 s" in err, err
        # the main thread's end() on a stopped store: bounded as well
        watch = PeerWatch(dist.PrefixStore("test", client), 1, 2, 1.0, lambda line, first: None, beat_s=0.1)
        t0 = time.monotonic()
        watch.end(True, "DataError: bad")
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(host.pid, signal.SIGCONT)  # the stuck calls complete, rather than fail noisily at the kill
        time.sleep(0.5)
        host.kill()
        host.communicate()


def test_a_job_suspended_and_resumed_apart_is_not_taken_for_lost(env):
    """scontrol suspend / gang scheduling: every rank stopped for longer than peer_timeout_s, then
    resumed a moment apart. A watcher does not count its own pause as the others' silence."""
    host = _rank_process(0, 0, 0.6, 0.1, env)
    other = None
    try:
        port = int(host.stdout.readline())
        other = _rank_process(1, port, 0.6, 0.1, env)
        _go(host, other)
        time.sleep(1.0)
        for p in (host, other):
            os.kill(p.pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(host.pid, signal.SIGCONT)
        time.sleep(0.2)  # well under peer_timeout_s, several beats
        os.kill(other.pid, signal.SIGCONT)
        time.sleep(3)
        assert host.poll() is None and other.poll() is None, (host.returncode, other.returncode)
    finally:
        for p in (host, other):
            if p is not None:
                p.kill()
                _, err = p.communicate()
                assert "error:" not in err, err


def test_rank_0s_store_gone_after_its_normal_end_ends_nobody():
    """Rank 0 done without a failure, then its process (and store) gone before another rank's
    main thread reached its own end: that rank is not told rank 0 was lost."""
    server = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=5), wait_for_workers=False)
    r0, r1 = Rank(server.port, 0), Rank(server.port, 1)
    started(r1)
    r0.watch.store.store.set("done/0", "1")  # rank 0's end(): done, no failure
    time.sleep(4 * BEAT)
    del server
    time.sleep(20 * BEAT)
    assert r1.lines == [] and r1.exits == []


def test_a_killed_store_host_is_seen_on_the_probe_without_a_cpp_stack_dump(capfd):
    """The idle probe connection shows the end of rank 0's process before a store call would find
    it, and such a call would make c10d print a C++ stack dump on this rank's stderr."""
    import socket

    server = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=5), wait_for_workers=False)
    r1 = Rank(server.port, 1, cause=lambda: "rank 0: DataError: bad.jpg")
    r1.watch.store.probe = socket.create_connection(("127.0.0.1", server.port))
    started(r1)
    time.sleep(2 * BEAT)
    del server
    assert r1.ended.wait(5)
    assert r1.lines[0].startswith("rank 1 stopped: rank 0 failed first (DataError: bad.jpg)")
    assert "TCPStore" not in capfd.readouterr().err
