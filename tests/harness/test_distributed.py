"""adarem/distributed.py: the ranks meet at start-up within trainer.start_timeout_s, or end with one line."""

from __future__ import annotations

import time

import pytest

from tests.conftest import free_port, run_train


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
    with pytest.raises(ConfigError, match=rf"^rank 0 waited 2 s at 127.0.0.1:{port} for the other 3 rank\(s\) of "
                                          r"WORLD_SIZE=4 \(.*\): start every rank \(one srun task each, not an `srun "
                                          r"--pty` shell; or torchrun\).*trainer.start_timeout_s$"):
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
    assert last.startswith("error: rank 0 waited 2 s at 127.0.0.1:") and "start every rank" in last, res.stderr[-2000:]
    assert not (run_dir / "run.json").exists()
    assert not run_dir.exists() or not any(p.name not in ("train.log", ".hydra") for p in run_dir.iterdir()), \
        sorted(p.name for p in run_dir.iterdir())


def test_start_timeout_is_checked_and_not_part_of_the_run_identity(tmp_path, env):
    res = run_train(["data=digits", "trainer.start_timeout_s=0"], env, tmp_path / "run", timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: trainer.start_timeout_s=0"), res.stderr[-2000:]
    from adarem.run.identity import NOT_IDENTITY
    assert "trainer.start_timeout_s" in NOT_IDENTITY
