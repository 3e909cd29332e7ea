"""adarem/distributed.py: the ranks meet at start-up within trainer.start_timeout_s, or end with one line."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from tests.conftest import REPO, free_port, run_train


def _meet(monkeypatch, port: int):
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))


def _as_rank(monkeypatch, rank: int, world: int, port: int) -> None:
    _meet(monkeypatch, port)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _refused_within(match: str, start_timeout_s: float, limit_s: float = 30) -> None:
    """init_distributed of this process's rank ends with ConfigError matching ``match``, within
    ``limit_s`` seconds."""
    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    began = time.monotonic()
    with pytest.raises(ConfigError, match=match):
        init_distributed("cpu", start_timeout_s=start_timeout_s)
    assert time.monotonic() - began < limit_s


def test_rank_0_alone_ends_after_the_start_timeout_naming_what_it_waited_for(monkeypatch):
    """`srun -n4 --pty bash` runs task 0's shell only; a train.py started there waited silently in
    init_process_group for its 30-minute timeout."""
    import torch.distributed as dist

    port = free_port()
    _as_rank(monkeypatch, 0, 4, port)
    _refused_within(rf"^rank 0: 1 of WORLD_SIZE=4 ranks met at 127.0.0.1:{port} within 2 s \(missing: rank 1, 2, 3\): "
                    r"start every rank \(one srun task each, not an `srun --pty` shell; or torchrun\)"
                    r".*trainer.start_timeout_s$", 2)
    assert not dist.is_initialized()


def test_a_rank_that_cannot_reach_rank_0_ends_too(monkeypatch):
    port = free_port()
    _as_rank(monkeypatch, 1, 2, port)
    _refused_within(rf"^rank 1 could not reach rank 0 at 127.0.0.1:{port} within 2 s of WORLD_SIZE=2", 2)


def test_train_py_of_a_missing_rank_exits_with_one_line_and_leaves_no_run(tmp_path, env):
    run_dir = tmp_path / "run"
    e = {**env, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    e.pop("TORCHELASTIC_RUN_ID", None)
    res = run_train(["data=digits", "trainer.start_timeout_s=2"], e, run_dir, timeout=120)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: 1 of WORLD_SIZE=2 ranks met at 127.0.0.1:") and "(missing: rank 1)" in last, \
        res.stderr[-2000:]
    assert not (run_dir / "run.json").exists()
    assert not run_dir.exists() or not any(p.name not in ("train.log", ".hydra") for p in run_dir.iterdir()), \
        sorted(p.name for p in run_dir.iterdir())


def test_start_timeout_is_checked_and_not_part_of_the_run_identity(tmp_path, env):
    res = run_train(["data=digits", "trainer.start_timeout_s=0"], env, tmp_path / "run", timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: trainer.start_timeout_s=0"), res.stderr[-2000:]
    from adarem.run.identity import NOT_IDENTITY
    assert "trainer.start_timeout_s" in NOT_IDENTITY


def test_a_rank_of_another_job_on_the_same_port_joins_nobody_and_ends(monkeypatch):
    """Two jobs on one node whose default MASTER_PORTs coincide: a rank of job 2 reaches job 1's
    store. It must meet nobody (every key is under its job) and end, and job 1's count of arrived
    ranks and its decision must not move."""
    import torch.distributed as dist

    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    port = free_port()
    job1 = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    meet1 = dist.PrefixStore("adarem/rendezvous/1", job1)
    meet1.add("arrived", 1)  # job 1's rank 0 is waiting for its rank 1
    _as_rank(monkeypatch, 1, 2, port)
    monkeypatch.setenv("SLURM_JOB_ID", "2")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    with pytest.raises(ConfigError, match=rf"^rank 1: 1 of WORLD_SIZE=2 ranks met at 127.0.0.1:{port} within 2 s"):
        init_distributed("cpu", start_timeout_s=2)
    assert meet1.add("arrived", 0) == 1 and not meet1.check(["state"])


def test_rank_0_that_cannot_listen_says_the_port_is_taken(monkeypatch):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _as_rank(monkeypatch, 0, 2, port)
        _refused_within(rf"^rank 0 of WORLD_SIZE=2 could not listen at 127.0.0.1:{port} \(.*\): another process "
                        r"\(another job on this node\?\) has the port; set MASTER_PORT$", 20, limit_s=15)


def test_the_default_port_of_a_slurm_job_is_below_the_ephemeral_range():
    from adarem.distributed import default_master_port

    ports = {default_master_port(j) for j in range(0, 40000, 7)}
    assert min(ports) >= 20000 and max(ports) < 32768
    sbatch = (REPO / "slurm" / "train.sbatch").read_text()
    assert "MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 12000))" in sbatch  # the script agrees with the package


def _in_thread(fn, *args):
    import threading

    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_a_rank_that_gave_up_never_completes_the_meeting_for_a_late_one(monkeypatch):
    """helper-89: rank 1 timed out and left, still counted as arrived; rank 2 came later, the count
    reached WORLD_SIZE, and ranks 0 and 2 went into init_process_group to wait 30 minutes for rank 1.
    Now the first to give up decides "abort" for everyone."""
    from adarem.config import ConfigError
    from adarem.rendezvous import rendezvous as _rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    r0, box0 = _in_thread(_rendezvous, 0, 3, 8.0)
    time.sleep(0.5)
    r1, box1 = _in_thread(_rendezvous, 1, 3, 1.5)
    r1.join(30)
    assert isinstance(box1.get("error"), ConfigError) and "2 of WORLD_SIZE=3 ranks met" in str(box1["error"]) \
        and "(missing: rank 2)" in str(box1["error"]), box1
    r2, box2 = _in_thread(_rendezvous, 2, 3, 8.0)  # the late rank
    for t in (r0, r2):
        t.join(30)
    for box in (box0, box2):
        assert "result" not in box, "a rank went on to init_process_group without rank 1"
        assert isinstance(box.get("error"), ConfigError), box
    for box in (box0, box2):  # the decision says why: rank 1 gave up, 2 of 3 had met
        assert "2 of WORLD_SIZE=3 ranks met" in str(box["error"]) and "(missing: rank 2; rank 1 gave up)" \
            in str(box["error"]), box


def test_a_rank_whose_time_ran_out_after_go_goes_on(monkeypatch):
    """The decision is made once: "go" by the rank that completes the count, and every rank that finds
    it goes on (a rank of 2 with a short timeout meets one that arrives within it)."""
    from adarem.rendezvous import rendezvous as _rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    r0, box0 = _in_thread(_rendezvous, 0, 2, 10.0)
    time.sleep(0.3)
    r1, box1 = _in_thread(_rendezvous, 1, 2, 10.0)
    for t in (r0, r1):
        t.join(30)
    assert "result" in box0 and "result" in box1, (box0, box1)


def test_a_listener_that_is_no_store_does_not_hang_a_rank(monkeypatch):
    """helper-89: a client that reached a service accepting connections and never answering blocked
    in TCPStore's constructor for good; the SLURM default ports can belong to any service."""
    import socket

    from adarem.config import ConfigError
    from adarem.rendezvous import rendezvous as _rendezvous

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        _meet(monkeypatch, other.getsockname()[1])
        began = time.monotonic()
        t, box = _in_thread(_rendezvous, 1, 2, 2.0)
        t.join(40)
        assert not t.is_alive() and isinstance(box.get("error"), ConfigError), box
        assert "accepted the connection but did not answer as rank 0's c10d store (another service on that port?)" \
            in str(box["error"])
        assert time.monotonic() - began < 30


def test_a_stop_signal_while_the_ranks_meet_ends_the_launch_for_a_requeue(monkeypatch, tmp_path, env):
    """helper-89: a preemption or scancel while the ranks met was ignored (the handler only sets a
    flag) until the 30-minute wait ended; now the launch ends at once with the requeue exit code."""
    import signal
    import subprocess

    from adarem.rendezvous import StartStopped, rendezvous as _rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    asked = time.monotonic() + 1.0
    with pytest.raises(StartStopped, match="stopped by a signal while the ranks met"):
        _rendezvous(0, 2, 60.0, lambda: time.monotonic() > asked)
    assert time.monotonic() - asked < 10
    # the real command: SIGTERM to a train.py waiting for its second rank
    e = {**env, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    e.pop("TORCHELASTIC_RUN_ID", None)
    from tests.conftest import FAST, REPO
    import sys
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *FAST, "data=digits", "trainer.start_timeout_s=120",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=e, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # imports, then the wait
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "note: rank 0 was stopped by a signal while" in err and "nothing trained: exit 75" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_rank_killed_after_it_arrived_ends_the_others_instead_of_go(monkeypatch, tmp_path):
    """helper-90: a rank SIGKILLed (out of memory) after it arrived still counted; when the last rank
    came, the others decided "go" and waited 30 minutes in init_process_group for it. Every rank
    now confirms it is still there once all have arrived, and "go" needs every confirmation."""
    import signal
    import subprocess
    import sys

    import adarem.rendezvous as rdv
    from adarem.config import ConfigError

    port = free_port()
    _meet(monkeypatch, port)
    monkeypatch.setattr(rdv, "CONFIRM_S", 3.0)
    r0, box0 = _in_thread(rdv.rendezvous, 0, 3, 60.0)
    code = ("import os, sys; sys.path.insert(0, os.getcwd()); from adarem.rendezvous import rendezvous; "
            "rendezvous(1, 3, 60.0)")
    victim = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    from torch.distributed import PrefixStore, TCPStore
    probe = PrefixStore("adarem/rendezvous/", TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=10)))
    while not probe.check(["arrived/1"]):  # rank 1 has arrived
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    r2, box2 = _in_thread(rdv.rendezvous, 2, 3, 60.0)
    began = time.monotonic()
    for t in (r0, r2):
        t.join(40)
    assert time.monotonic() - began < 30
    for box in (box0, box2):
        assert "result" not in box and isinstance(box.get("error"), ConfigError), box
        assert "rank 1 arrived at" in str(box["error"]) and "stopped answering" in str(box["error"]), box


@pytest.mark.parametrize("second", [(1, 3), (2, 4)])
def test_a_rank_given_twice_or_another_world_size_ends_the_launch(monkeypatch, second):
    """helper-90: RANK=1 given to two processes, or WORLD_SIZE 3 and 2 on two ranks, passed the
    meeting ("go") and hung in init_process_group."""
    from adarem.config import ConfigError
    from adarem.rendezvous import rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    r0, box0 = _in_thread(rendezvous, 0, 3, 20.0)
    r1, box1 = _in_thread(rendezvous, 1, 3, 20.0)
    time.sleep(1.0)
    rank, world = second
    with pytest.raises(ConfigError, match=r"RANK=1 was started twice|WORLD_SIZE differs between the ranks"):
        rendezvous(rank, world, 20.0)
    for t in (r0, r1):
        t.join(40)
    for box in (box0, box1):  # the launch cannot start: its ranks end with the reason, not "go"
        assert "result" not in box and isinstance(box.get("error"), ConfigError), box
        assert ("a second process was given RANK=1" if rank == 1 else "rank 2 was given WORLD_SIZE=4, not 3") \
            in str(box["error"]), box


def test_a_rank_out_of_range_is_refused_before_connecting(monkeypatch):
    from adarem.config import ConfigError
    from adarem.rendezvous import rendezvous

    _meet(monkeypatch, free_port())
    with pytest.raises(ConfigError, match=r"^RANK=3 is not in \[0, WORLD_SIZE=3\)"):
        rendezvous(3, 3, 5.0)


def test_every_rank_stopped_together_ends_for_a_requeue(monkeypatch):
    """helper-90: with SIGTERM reaching two ranks at once, one read the other's abort before its own
    flag and exited 2, not 75: a preemption must requeue whichever rank decided."""
    from adarem.rendezvous import StartStopped, rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    at = time.monotonic() + 1.5
    boxes = [_in_thread(rendezvous, r, 3, 30.0, lambda: time.monotonic() > at) for r in (0, 1)]
    for t, _ in boxes:
        t.join(30)
    for _, box in boxes:
        assert isinstance(box.get("error"), StartStopped), box


def test_ranks_started_by_separate_srun_calls_of_one_job_meet(monkeypatch):
    """helper-91: one `srun -n1` per rank gives each its own SLURM_STEP_ID; keyed by job and step,
    the ranks met nobody and each blamed the other after the whole timeout."""
    from adarem.rendezvous import rendezvous

    port = free_port()
    _meet(monkeypatch, port)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    r0, box0 = _in_thread(rendezvous, 0, 2, 20.0)
    time.sleep(1.0)  # rank 0 is meeting, under its step's environment
    monkeypatch.setenv("SLURM_STEP_ID", "1")
    r1, box1 = _in_thread(rendezvous, 1, 2, 20.0)
    for t in (r0, r1):
        t.join(30)
    assert "result" in box0 and "result" in box1, (box0, box1)
