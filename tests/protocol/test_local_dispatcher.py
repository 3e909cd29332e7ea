"""The local launcher's worker processes do not outlive a compare that was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

CODE = """
import os, signal, sys, time
from adarem.protocol.dispatch import LocalDispatcher
with LocalDispatcher(workers=1, threads=1) as d:
    fut = d.pool.submit(time.sleep, 120)  # a trial still training
    while not d.pool._processes:
        time.sleep(0.05)
    time.sleep(1.0)
    print(*d.pool._processes, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # compare killed (OOM killer, scancel --signal=KILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie of an exited worker counts as gone
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_workers_exit_when_compare_is_killed():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    pids = [int(x) for x in out.stdout.split()]
    assert pids
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [p for p in pids if _alive(p)]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover, "a pool worker outlived its compare process"


STOP_CODE = """
import os, signal, threading, time, types
from adarem.protocol import dispatch
got = []
ev = types.SimpleNamespace(value=0)  # the compare's shared byte
dispatch._stop_with_compare(ev)
dispatch._IN_TRIAL.set()  # a trial starting: its SIGTERM handler is not installed yet
ev.value = 1  # the compare leaves on an error
time.sleep(0.3)  # SIGTERM now would kill this process: the watch waits for the trial's handler
from adarem.run.signals import StopFlag
flag = StopFlag()
flag.install()
time.sleep(0.5)
got.append(flag.signal_name)
print(got, dispatch._STOPPED.is_set(), flush=True)
try:
    dispatch.run_one(["trainer.epochs=1"], 1)
except KeyboardInterrupt as exc:
    print("not begun:", exc, flush=True)
"""


def test_a_worker_stops_its_trial_and_begins_no_other_when_compare_leaves_on_an_error():
    """A refused second compare on the same runs= left its pool's already-queued trials (beyond
    cancel_futures' reach) to be trained, holding their locks against the first compare; after
    Ctrl-C a queued trial was begun and trained to the end. The worker now stops its trial as a
    preemption does (SIGTERM, once the trial's handler is in place) and begins no queued one."""
    out = subprocess.run([sys.executable, "-c", STOP_CODE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["['SIGTERM'] True", "not begun: not started: the comparison is stopping"]


ENDED_CODE = """
import signal, time, types
from adarem.protocol import dispatch
from adarem.run.signals import StopFlag
ev = types.SimpleNamespace(value=0)
dispatch._stop_with_compare(ev)
dispatch._IN_TRIAL.set()
flag = StopFlag()
flag.install()
looked = signal.getsignal(signal.SIGTERM)
flag.uninstall()
# the trial ends just after the watch looked: what it saw is the trial's handler, what is in place
# is the default again, and _IN_TRIAL is not cleared yet
signal.getsignal = lambda sig: looked if sig == signal.SIGTERM else signal.SIG_DFL
ev.value = 1  # the compare leaves now
time.sleep(0.5)
dispatch._IN_TRIAL.clear()
print("alive", flush=True)
"""


def test_a_stop_as_a_trial_ends_does_not_kill_its_worker():
    """The watch sent SIGTERM where a trial was in progress; in the moment between the trial
    giving its handler back and leaving run_one, that SIGTERM killed the worker (BrokenProcessPool
    noise as the compare stopped). It now sets the trial's own stop flag, and only while that flag's
    handler is in place."""
    out = subprocess.run([sys.executable, "-c", ENDED_CODE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.splitlines() == ["alive"]


def test_a_second_compare_of_one_setting_on_one_runs_folder_is_refused_before_it_starts_anything(tmp_path, env):
    """The same compare launched twice on one runs=: the second was refused by a locked trial, but
    its pool's queued trials trained on, holding their locks, and stopped the first. A compare of
    another setting (another experiment, as slurm/sweep_paper.sh runs in parallel) is not refused."""
    import fcntl

    from adarem.protocol import cli
    from adarem.protocol.dispatch import compose

    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["optimizers=sgd", "seeds=1", "select_seeds=1", "lr_grid=1", "data=digits", "trainer.epochs=1"]
    key = cli.setting_key(compose(cli.trial_base(cli.parse(argv)[1])))
    fd = os.open(runs / f".compare-{key}.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"host test pid 1\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first compare, still running
    try:
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={runs}",
                              f"out={tmp_path / 'out'}", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        assert res.stderr.strip().splitlines()[-1] == (
            f"error: another compare.py of this setting is running on runs={runs} (host test pid 1); wait for it to "
            f"end, or give this comparison its own runs=: two would train and lock each other's trials")
        assert sorted(p.name for p in runs.iterdir()) == [f".compare-{key}.lock"]  # nothing launched
        other = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={runs}",
                                f"out={tmp_path / 'out2'}", *argv[:-1], "trainer.epochs=2"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
        assert other.returncode == 0, other.stderr[-2000:]
    finally:
        os.close(fd)
    # released when compare() returns: called again in one process (a notebook), it is not refused
    for _ in range(2):
        assert cli.compare([f"runs={runs}", f"out={tmp_path / 'out3'}", *argv[:-1], "trainer.epochs=2"]) == 0


def test_one_setting_spelled_otherwise_takes_the_same_lock():
    """The lock was named by the overrides' text: another order, ++key=, a loader or logging setting
    gave another lock for the same trial directories, and both compares ran into each other."""
    from adarem.protocol import cli
    from adarem.protocol.dispatch import compose

    def key(*argv):
        return cli.setting_key(compose(cli.trial_base(cli.parse(list(argv))[1])))

    same = key("optimizers=sgd", "trainer.epochs=2", "model=small_cnn")
    assert same == key("optimizers=sgd", "model=small_cnn", "trainer.epochs=2") \
        == key("optimizers=adam", "++trainer.epochs=2", "model=small_cnn", "data.num_workers=1") \
        == key("optimizers=sgd", "trainer.epochs=2", "model=small_cnn", "logging.wandb=offline") \
        == key("optimizers=sgd", "trainer.epochs=2", "model=small_cnn", "trainer.evals_per_epoch=2")
    assert key("optimizers=sgd", "trainer.epochs=3", "model=small_cnn") != same  # other trials
    assert key("experiment=fashion_mnist") != key("experiment=paper_resnet50")


def test_a_runs_folder_without_file_locks_is_said_and_not_fatal(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    from adarem.protocol import cli

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cli.hold_runs_folder(tmp_path / "runs", "0123456789")
    assert "does not support file locks (No locks available)" in capsys.readouterr().err
    assert cli._HELD == []


def test_ctrl_c_begins_no_queued_trial(tmp_path, env):
    """Ctrl-C in a terminal signals compare and its workers: the running trial is interrupted, and
    the trial the pool had queued behind it (began 0 s after the signal and trained to the end,
    hours on a GPU) is not begun."""
    import datetime
    import json

    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={runs}",
                             f"out={tmp_path / 'out'}", "optimizers=sgd", "seeds=1", "select_seeds=2",
                             "lr_grid=0.5,1,2", "workers=1", "data=digits", "trainer.epochs=30"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            # as a terminal's foreground job has it: a shell's background jobs (CI)
                            # inherit SIGINT ignored, and Python then keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not list(runs.glob("select/*/*/metrics.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the first trial is training
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(1.0)
        signalled = datetime.datetime.now(datetime.timezone.utc)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    records = [json.loads(p.read_text()) for p in runs.glob("select/*/*/run.json")]
    begun_after = [r["start_time"] for r in records  # start_time has microseconds (whole seconds before)
                   if datetime.datetime.fromisoformat(r["start_time"]) >= signalled]
    assert not begun_after, (begun_after, signalled)
    assert [r["status"] for r in records] == ["interrupted"], records



def test_sigterm_to_compare_stops_its_trial_as_preempted_and_says_so(tmp_path, env):
    """helper-92: a SIGTERM to compare.py alone (a time limit, `timeout`) ended it at once with exit
    143 and no line of its own. It now leaves as on Ctrl-C: its running trial stops as a preempted
    run (checkpointed), and one line says to launch the same command again."""
    import json

    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={runs}",
                             f"out={tmp_path / 'out'}", "optimizers=sgd", "seeds=1", "select_seeds=1",
                             "lr_grid=1", "workers=1", "data=digits", "trainer.epochs=30"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(runs.glob("select/*/*/metrics.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the trial is training
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # the compare process only
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM; launch the same command again"), err[-2000:]
    records = [json.loads(p.read_text()) for p in runs.glob("select/*/*/run.json")]
    assert [r["status"] for r in records] == ["preempted"], records
