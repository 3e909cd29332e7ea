"""LocalDispatcher.run keeps at most 2 x workers trials unfinished, in the order given, and keeps
the workers busy: a long trial at the head of the stage must not leave the other workers idle once
the short trials behind it (e.g. diverged at a high lr) are done. Threads stand in for the spawned
processes and a stand-in for run_one; the scheduling is the dispatcher's own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from adarem.protocol import dispatch


class _CountingPool(ThreadPoolExecutor):
    def __init__(self, workers: int):
        super().__init__(max_workers=workers)
        self.futures, self.most_unfinished = [], 0

    def submit(self, fn, *args):
        unfinished = sum(not f.done() for f in self.futures) + 1
        self.most_unfinished = max(self.most_unfinished, unfinished)
        fut = super().submit(fn, *args)
        self.futures.append(fut)
        return fut


def test_a_long_head_trial_does_not_idle_the_other_workers(monkeypatch):
    n_short = 7  # more than 2 x workers - 1: with the window tied to the head, some wait for it
    started = set()
    lock = threading.Lock()
    all_short_started = threading.Event()

    def run_one(overrides, threads):
        name = overrides[0]
        if name == "head":  # ends once every short trial has started (they must not wait for it)
            return {"status": "finished" if all_short_started.wait(5.0) else "starved"}
        with lock:
            started.add(name)
            if len(started) == n_short:
                all_short_started.set()
        return {"status": "finished"}

    monkeypatch.setattr(dispatch, "run_one", run_one)
    disp = dispatch.LocalDispatcher(workers=2, threads=1)
    disp.pool = _CountingPool(2)  # in place of __enter__'s spawned processes
    trials = [("head", ["head"])] + [(f"s{i}", [f"s{i}"]) for i in range(n_short)]
    try:
        out = list(disp.run("select", trials))
    finally:
        disp.__exit__(None, None, None)
    assert [k for k, _ in out] == [k for k, _ in trials]  # the order given
    assert out[0][1]["status"] == "finished", "the short trials waited for the head trial to be taken"
    assert 2 <= disp.pool.most_unfinished <= 4, disp.pool.most_unfinished
