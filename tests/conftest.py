"""Shared fixtures: run the real train.py command line in a subprocess, on tiny real data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

# `python -m pytest` (the whole suite: no files or node ids named) runs on DEFAULT_WORKERS
# pytest-xdist workers: a serial run leaves a core idle while a one-process test (train.py,
# compare.py, imports) runs; two workers keep both cores of a 2-core machine busy (1,390 s serial ->
# ~900 s). Set here rather than as `-n 2` in addopts so that a pytest without xdist (the GPU
# machine's, `-p no:xdist`) still runs, and so that a pytest started by a test stays serial. Named
# files or tests, -s/--capture=no, --pdb, --trace and --collect-only run serially (start-up of the
# workers would dominate, and printing and debuggers need the main process); `-n N` asks for N.
DEFAULT_WORKERS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    opt = config.option
    if not hasattr(opt, "numprocesses") or "PYTEST_XDIST_WORKER" in os.environ:
        return  # xdist not loaded, or this is a worker (or a pytest started by a test)
    interactive = (config.getoption("usepdb", False) or config.getoption("trace", False)
                   or config.getoption("capture", "fd") == "no" or config.getoption("collectonly", False))
    if opt.numprocesses is None and not getattr(opt, "tx", None) and not opt.file_or_dir and not interactive:
        opt.numprocesses = DEFAULT_WORKERS
        if opt.dist == "no":
            # worksteal: an idle worker takes half of the other's queue, so that the few 30-120 s
            # tests do not leave one worker waiting at the end
            opt.dist = "worksteal"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adarem-cache")


@pytest.fixture(scope="session")
def env(cache_dir) -> dict:
    e = dict(os.environ)
    e.update(ADAREM_CACHE=str(cache_dir), WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def free_port() -> int:
    """A TCP port that nothing listens on now, for torchrun's --master-port: fixed ports collide
    when two test processes (xdist workers, or a developer's second session) run DDP tests at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]


# small, fast defaults for every train.py run in the tests
FAST = ["logging.wandb=disabled", "logging.progress=lines", "trainer.epochs=2", "trainer.batch_size=64",
        "trainer.log_every=5"]


def run_train(args: list[str], env: dict, run_dir: Path | None = None, launcher: list[str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py"), *FAST, *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def processes_with(marker: str) -> list[int]:
    """The live processes whose environment holds ``marker`` (a train.py given it in its
    environment, and any worker it started)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def read_run(run_dir: Path) -> dict:
    with open(run_dir / "run.json") as f:
        return json.load(f)


def require_fashion_mnist():
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install dataset-fashion-mnist (scripts/setup.sh does)")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a shared run directory, for a test that changes it (run_dir is not part of
    a run's identity, so the copy resumes and refuses exactly as the original would)."""
    shutil.copytree(src, dst)
    return dst


# Runs that several tests start from. Each is made once per test process by the real command
# line; tests read them, or change a copy_run() of them.

@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory, env) -> Path:
    """The FAST defaults stopped by trainer.max_steps=3 (exit 0): status stopped, checkpoint.pt
    after step 3 of epoch 0. Read only: copy_run() it to change it."""
    run_dir = tmp_path_factory.mktemp("shared") / "stopped"
    res = run_train(["trainer.max_steps=3"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == "stopped"
    return run_dir


# deterministic and with dropout: a rerun, or a resumed run, is bit-identical to an uninterrupted one
DETERMINISTIC = ["trainer.deterministic=true", "model.drop_rate=0.1"]


@pytest.fixture(scope="session")
def deterministic_run(tmp_path_factory, env) -> Path:
    """The FAST defaults with DETERMINISTIC (2 epochs of 22 steps), finished: the uninterrupted
    reference that stopped and resumed runs are compared with. Read only."""
    run_dir = tmp_path_factory.mktemp("shared") / "deterministic"
    res = run_train(DETERMINISTIC, env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == "finished"
    return run_dir


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, env) -> Path:
    """The FAST defaults with trainer.epochs=1, finished. Read only: copy_run() it to change it."""
    run_dir = tmp_path_factory.mktemp("shared") / "finished"
    res = run_train(["trainer.epochs=1"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == "finished"
    return run_dir



def submitit_job_pid(folder: Path) -> int | None:
    """The submitit job process (python -m submitit.core._submit <a folder under ``folder``>)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"submitit.core._submit" in c for c in cmd) and any(str(folder).encode() in c for c in cmd):
            return int(proc.name)
    return None


# The variables that make train() a rank of a process group: one left set by a test (adarem.distributed
# writes RANK, WORLD_SIZE, LOCAL_RANK and MASTER_* into os.environ) made the next in-process train()
# of the same worker wait in init_process_group for ranks that never come
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                  "SLURM_STEP_ID")


@pytest.fixture(autouse=True)
def no_rank_variables_leak():
    before = {k: os.environ.get(k) for k in RANK_VARIABLES}
    yield
    leaked = {k: os.environ.get(k) for k in RANK_VARIABLES if os.environ.get(k) != before[k]}
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert not leaked, f"the test left {leaked} in os.environ (restored): the next in-process train() would join a process group"
