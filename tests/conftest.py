"""Shared fixtures: run the real train.py command line in a subprocess, on tiny real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adarem-cache")


@pytest.fixture(scope="session")
def env(cache_dir) -> dict:
    e = dict(os.environ)
    e.update(ADAREM_CACHE=str(cache_dir), WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


# small, fast defaults for every train.py run in the tests
FAST = ["logging.wandb=disabled", "logging.progress=lines", "trainer.epochs=2", "trainer.batch_size=64",
        "trainer.log_every=5"]


def run_train(args: list[str], env: dict, run_dir: Path | None = None, launcher: list[str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py"), *FAST, *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


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
