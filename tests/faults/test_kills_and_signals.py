"""Nothing is lost under kill -9, signals and torn checkpoint writes: each interrupted run,
resumed with resume=auto, ends bit-identical to an uninterrupted one (CPU, deterministic)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, REPO, read_metrics, read_run, run_train

COMMON = ["trainer.deterministic=true", "model.drop_rate=0.1", "trainer.epochs=3"]
TIMING = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    res = run_train(COMMON, env, run_dir)
    assert res.returncode == 0, res.stderr
    return run_dir


def assert_same_as(reference, run_dir, iter_lines=True):
    a = torch.load(reference / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
                          for r in rows if iter_lines or r["type"] != "iter"]
    assert strip(read_metrics(reference)) == strip(read_metrics(run_dir))
    assert read_run(run_dir)["status"] == "finished"


@pytest.mark.parametrize("fault", ["step@30", "epoch_end@1", "eval@1", "checkpoint_write@3"])
def test_kill_9_then_resume_is_bit_identical(tmp_path, env, reference, fault):
    """mid-epoch (step 30; 22 steps per epoch), right after an epoch end, during evaluation, and
    half-way through writing a checkpoint."""
    run_dir = tmp_path / "run"
    killed = run_train(COMMON, dict(env, ADAREM_FAULT=fault), run_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_run(run_dir)["status"] == "running"  # what a real kill -9 leaves behind
    if fault.startswith("checkpoint_write"):
        assert list(run_dir.glob(".checkpoint.pt.tmp-*"))  # the torn write, never renamed into place
        torch.load(run_dir / "checkpoint.pt", weights_only=False)  # the previous one still loads
    resumed = run_train(COMMON, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.glob(".checkpoint.pt.tmp-*"))
    assert_same_as(reference, run_dir)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, env, reference):
    run_dir = tmp_path / "run"
    assert run_train(COMMON, dict(env, ADAREM_FAULT="step@50"), run_dir).returncode == -signal.SIGKILL
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # disk trouble: the latest file is truncated
    resumed = run_train(COMMON, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as(reference, run_dir)
    # said, not skipped with an info line: which file was unreadable, and that steps are redone
    said = resumed.stdout + resumed.stderr  # Hydra's log handler writes to stdout (and train.log)
    assert f"checkpoint {latest} is unreadable" in said and "resuming from checkpoint_prev.pt (step " in said \
        and "the steps since are trained again" in said and "WARNING" in said, said[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_step_checkpoints_quickly_and_resumes(tmp_path, env, reference, sig):
    """The signal arrives while step 3 is due: the run checkpoints there, not at the epoch's end.
    The process holds itself (SIGSTOP) right after step 2, so where the signal lands does not
    depend on how loaded the machine is."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, *COMMON, "trainer.log_every=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(env, ADAREM_FAULT="step@2:STOP"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "T":  # stopped after step 2
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(sig)  # pending until the process runs again
    os.kill(proc.pid, signal.SIGCONT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, out[-2000:]
    run = read_run(run_dir)
    stopped_at = int(re.search(r"preempted at step (\d+)", out).group(1))
    assert stopped_at in (2, 3) and stopped_at < run["steps_per_epoch"], (stopped_at, run["steps_per_epoch"])
    assert run["status"] == "preempted" and run["signal"] == sig.name
    assert (run_dir / "checkpoint.pt").exists()
    resumed = run_train(COMMON, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as(reference, run_dir, iter_lines=False)  # the first part logged every step


def test_diverged_run_shows_in_tables(tmp_path, env):
    run_dir = tmp_path / "runs" / "div"
    res = run_train(["optimizer=adam", "optimizer.lr=1e5", "trainer.log_every=1"], env, run_dir)
    assert res.returncode == 0 and "DIVERGED" in res.stderr
    from adarem.results import load_runs
    from adarem.results.tables import error_table

    rs = load_runs(tmp_path / "runs")
    table = error_table(rs)
    assert int(table.loc[0, "diverged"]) == 1 and int(table.loc[0, "n"]) == 1
    assert os.path.exists(run_dir / "checkpoint.pt") or read_run(run_dir)["diverged_at_step"] <= 5
