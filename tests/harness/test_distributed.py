"""adarem/distributed.py: the ranks meet at start-up within trainer.start_timeout_s, or end with one line."""

from __future__ import annotations

import time

import pytest

from tests.conftest import REPO, free_port, run_train


def _as_rank(monkeypatch, rank: int, world: int, port: int) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))


def test_rank_0_alone_ends_after_the_start_timeout_naming_what_it_waited_for(monkeypatch):
    """`srun -n4 --pty bash` runs task 0's shell only; a train.py started there waited silently in
    init_process_group for its 30-minute timeout."""
    import torch.distributed as dist

    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    port = free_port()
    _as_rank(monkeypatch, 0, 4, port)
    began = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^rank 0: 1 of WORLD_SIZE=4 ranks met at 127.0.0.1:{port} within 2 s: "
                                          r"start every rank \(one srun task each, not an `srun --pty` shell; or "
                                          r"torchrun\).*trainer.start_timeout_s$"):
        init_distributed("cpu", start_timeout_s=2)
    assert time.monotonic() - began < 30
    assert not dist.is_initialized()


def test_a_rank_that_cannot_reach_rank_0_ends_too(monkeypatch):
    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    port = free_port()
    _as_rank(monkeypatch, 1, 2, port)
    began = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^rank 1 could not reach rank 0 at 127.0.0.1:{port} within 2 s of "
                                          r"WORLD_SIZE=2"):
        init_distributed("cpu", start_timeout_s=2)
    assert time.monotonic() - began < 30


def test_train_py_of_a_missing_rank_exits_with_one_line_and_leaves_no_run(tmp_path, env):
    run_dir = tmp_path / "run"
    e = {**env, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    e.pop("TORCHELASTIC_RUN_ID", None)
    res = run_train(["data=digits", "trainer.start_timeout_s=2"], e, run_dir, timeout=120)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: 1 of WORLD_SIZE=2 ranks met at 127.0.0.1:") and "start every rank" in last, \
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
    store. It must meet nobody (every key is under its job and step) and end, and job 1's count of
    arrived ranks must not move."""
    import datetime as dt

    import torch.distributed as dist

    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    port = free_port()
    job1 = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    meet1 = dist.PrefixStore("adarem/rendezvous/1.0", job1)
    meet1.add("arrived", 1)  # job 1's rank 0 is waiting for its rank 1
    _as_rank(monkeypatch, 1, 2, port)
    monkeypatch.setenv("SLURM_JOB_ID", "2")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    with pytest.raises(ConfigError, match=rf"^rank 1: 1 of WORLD_SIZE=2 ranks met at 127.0.0.1:{port} within 2 s"):
        init_distributed("cpu", start_timeout_s=2)
    assert meet1.add("arrived", 0) == 1 and not meet1.check(["all_here"])


def test_rank_0_that_cannot_listen_says_the_port_is_taken(monkeypatch):
    import socket

    from adarem.config import ConfigError
    from adarem.distributed import init_distributed

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _as_rank(monkeypatch, 0, 2, port)
        began = time.monotonic()
        with pytest.raises(ConfigError, match=rf"^rank 0 of WORLD_SIZE=2 could not listen at 127.0.0.1:{port} \(.*\): "
                                              r"another process \(another job on this node\?\) has the port; set "
                                              r"MASTER_PORT$"):
            init_distributed("cpu", start_timeout_s=20)
        assert time.monotonic() - began < 15


def test_the_default_port_of_a_slurm_job_is_below_the_ephemeral_range():
    from adarem.distributed import default_master_port

    ports = {default_master_port(j) for j in range(0, 40000, 7)}
    assert min(ports) >= 20000 and max(ports) < 32768
    sbatch = (REPO / "slurm" / "train.sbatch").read_text()
    assert "MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 12000))" in sbatch  # the script agrees with the package
