"""Preemption under hydra-submitit-launcher: submitit's signal (SIGUSR2) reaches a running job;
the run checkpoints its current step and records ``preempted`` before submitit's own handler
requeues the job; launched again, the run resumes from that checkpoint and finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO, read_metrics, read_run, submitit_job_pid

pytestmark = pytest.mark.slow


def _sweep(sweep: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=local", *FAST,
                             "trainer.epochs=3", "trainer.batch_size=16", "trainer.log_every=2",
                             "trainer.checkpoint_every_min=0", f"hydra.sweep.dir={sweep}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_submitit_signal_checkpoints_then_requeues_and_the_run_resumes(tmp_path, env):
    sweep = tmp_path / "sweep"
    sweep_proc = _sweep(sweep, env)
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and sweep_proc.poll() is None:  # wait for training steps
        found = list(sweep.rglob("metrics.jsonl"))
        if found and found[0].read_text().count('"type": "iter"') >= 3:
            run_dir = found[0].parent
            break
        time.sleep(0.2)
    assert run_dir is not None, sweep_proc.communicate()[0][-3000:]
    pid = submitit_job_pid(sweep)
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)
    # submitit's local controller restarts a job that its handler requeued, as SLURM would
    out = sweep_proc.communicate(timeout=600)[0]
    assert sweep_proc.returncode == 0, out[-3000:]

    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.err"))
    ours, theirs = logs.find("preempted at step"), logs.find("Caught signal SIGUSR2")
    assert 0 <= ours < theirs, logs[-3000:]  # our checkpoint first, then submitit's requeue
    assert "(signal SIGUSR2); checkpoint written" in logs
    assert "Requeued job" in "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    record = read_run(run_dir)
    assert record["status"] == "finished" and record["restarts"] == 1
    per_epoch = next(m["step"] for m in read_metrics(run_dir) if m.get("type") == "epoch")
    stopped = int(logs[ours:].split()[3])
    assert 0 < stopped < 3 * per_epoch  # stopped before the end, at the step it was at ...
    out_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    resumed = out_logs.split("resumed from")[1].splitlines()[0]
    assert resumed.endswith(f"at epoch {stopped // per_epoch}, batch {stopped % per_epoch}")  # ... resumed there
    steps = [m["step"] for m in read_metrics(run_dir) if m.get("type") == "iter"]
    assert steps == sorted(set(steps)) and steps[-1] == 3 * per_epoch  # no step lost or repeated
