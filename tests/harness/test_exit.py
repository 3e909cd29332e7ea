"""How a train.py process ends: with os._exit once its records are written and its loaders'
workers ended, skipping the interpreter's 2-2.5 s teardown of torch's modules (a fifth of a
short run), unless it started wandb, whose atexit hooks must run."""

from __future__ import annotations

import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import FAST, REPO, processes_with, read_run

# train.py run as `python train.py ...` would run it, with an atexit hook that says whether the
# interpreter's normal teardown ran
PROBE = ("import atexit, runpy, sys\n"
         "atexit.register(lambda: print('TEARDOWN RAN', flush=True))\n"
         "sys.argv = sys.argv[1:]\n"
         "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_run_ends_without_the_teardown_and_leaves_no_worker_behind(tmp_path, env, loader):
    """timm imports wandb, so the old test ("wandb" in sys.modules) sent every run that built its
    model through the full teardown. Skipping it must not orphan a worker (2 DataLoader processes,
    a DALI pool): Run.close ends the kept ones, and none is left when train.py has ended."""
    tree = make_photo_tree(tmp_path / "tree", classes=2, train_per_class=8, val_per_class=2, size_range=(40, 60))
    marker = f"ADAREM_EXIT_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    run_dir = tmp_path / "run"
    args = [*FAST, "data=folder", f"data.root={tree}", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4",
            "data.num_workers=2", f"data.loader={loader}", f"hydra.run.dir={run_dir}"]
    res = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "train.py"), *args], cwd=REPO,
                         env={**env, key: value}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == "finished"
    assert "TEARDOWN RAN" not in res.stdout  # os._exit: atexit hooks and module teardown skipped
    assert processes_with(marker) == []  # no DataLoader or DALI worker outlived train.py


def test_a_process_that_started_wandb_ends_through_its_atexit_hooks(monkeypatch, tmp_path):
    """Only a Tracker that called wandb.init sets tracking.STARTED (train.py then ends with sys.exit,
    so that wandb's service and an offline run's files are closed by wandb's own hooks)."""
    from adarem import tracking

    monkeypatch.setattr(tracking, "STARTED", False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # Tracker.start sets it; undone after the test
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: types.SimpleNamespace(log=lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracking.Tracker("offline", enabled=False).start(tmp_path, "id", "p", None, "g", "n", {})
    assert tracking.STARTED is False  # disabled: wandb is never started, even when imported (by timm)
    tracking.Tracker("offline", enabled=True).start(tmp_path, "id", "p", None, "g", "n", {})
    assert tracking.STARTED is True


def test_an_os_error_outside_the_run_directory_is_not_blamed_on_it():
    """A read-only data cache (ADAREM_CACHE) was answered "(free space or choose a writable
    hydra.run.dir)", which changes nothing."""
    import errno

    from adarem.cli.train import os_error_hint

    cache = OSError(errno.EROFS, "Read-only file system", "/ro/cache/digits")
    assert os_error_hint(cache, "/work/runs/x") == (" (free space, or make /ro/cache/digits writable or set the "
                                                    "option or variable that chose it: it is not in the run directory)")
    full = OSError(errno.ENOSPC, "No space left on device", "/work/runs/x/metrics.jsonl")
    assert os_error_hint(full, "/work/runs/x") == " (free space or choose a writable hydra.run.dir)"
    assert os_error_hint(OSError("no file"), "/work/runs/x") == " (free space or choose a writable hydra.run.dir)"
