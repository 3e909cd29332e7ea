"""A loader worker that dies (the out-of-memory killer's SIGKILL) ends the run in seconds with one
line naming it, run.json failed, and no process left behind. With DALI the run used to hang for
good: the training thread waited inside DALI's task queue for the dead worker, and closing the
pipeline waited for workers that ignore SIGTERM (adarem/data/dali_workers.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import FAST, REPO, processes_with, read_metrics, read_run

pytest.importorskip("nvidia.dali")

LIMIT_S = 120  # a hang fails the test; the runs below take about 10 s


def run_to_the_end(cmd: list[str], env: dict, marker: str, kill_child_when=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (its own session, so that a hang is cleaned up whole); ``kill_child_when``: a
    predicate polled while it runs, then one of its worker processes is SIGKILLed."""
    key, value = marker.split("=")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, key: value}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        if kill_child_when is not None:
            deadline = time.monotonic() + LIMIT_S
            while not kill_child_when() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            workers = [p for p in processes_with(marker) if p != proc.pid]
            assert workers, "no worker process to kill"
            os.kill(min(workers), signal.SIGKILL)
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: still running after {LIMIT_S} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """2 classes x (8 train, 2 val) JPEGs: 4 training batches of 4, one validation batch."""
    return make_photo_tree(tmp_path_factory.mktemp("tree"), classes=2, train_per_class=8, val_per_class=2,
                           size_range=(40, 60))


def train_args(tree, run_dir, loader: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *FAST, "data=folder", f"data.root={tree}", "data.image_size=32",
            "data.val_resize=36", "trainer.batch_size=4", "trainer.log_every=1", "data.num_workers=2",
            f"data.loader={loader}", f"hydra.run.dir={run_dir}"]


def assert_failed_in_one_line(res, run_dir, marker: str, says: str, last_line: bool = True) -> None:
    """``last_line=False``: the error line may come before the end of stderr, or inside other text
    (torch's file-descriptor sharing thread may print a traceback of its own as a DataLoader
    worker dies, interleaved with train.py's line)."""
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    if last_line:
        assert last.startswith("error: ") and says in last, res.stderr[-3000:]
    else:
        assert f"error: {says}" in res.stderr, res.stderr[-3000:]
    # not Hydra's report of an uncaught exception. (torch's SIGCHLD handler raises wherever the
    # training thread is; raised inside an at-fork hook, as a DataLoader forks, Python prints it as
    # "Exception ignored", and torch's iterator then reports the same death.)
    assert "Error executing job" not in res.stderr, res.stderr[-3000:]
    record = read_run(run_dir)
    assert record["status"] == "failed"
    assert says in str(record)
    assert processes_with(marker) == []  # the surviving workers were ended too


# The first DALI worker of the training pipeline to read its 5th sample (of 16 + prefetch, read by
# 2 workers in epoch 1) kills itself; in the validation pipeline (4 samples a pass, 2 passes), the
# first to read its 3rd: both die while the training thread is reading from their pipeline.
@pytest.mark.parametrize("fault", ["dali_train_read@5", "dali_val_read@3"])
def test_a_dali_worker_killed_while_reading_fails_the_run_in_one_line(tmp_path, env, small_tree, fault):
    marker = f"ADAREM_WORKER_DEATH_TEST={uuid.uuid4().hex}"
    run_dir = tmp_path / "run"
    start = time.monotonic()
    res = run_to_the_end(train_args(small_tree, run_dir, "dali"), {**env, "ADAREM_FAULT": fault}, marker)
    assert_failed_in_one_line(res, run_dir, marker, "was killed by SIGKILL (signal 9")
    assert "DALI worker process" in res.stderr
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_worker_killed_from_outside_fails_the_run_in_one_line(tmp_path, env, small_tree, loader):
    """SIGKILL from another process once training has logged its first step: a training worker
    (torch: the kept DataLoader's; DALI: the training pipeline's) or, for DALI, possibly one of
    an idle pipeline (the lowest pid: the first worker started)."""
    marker = f"ADAREM_WORKER_DEATH_TEST={uuid.uuid4().hex}"
    run_dir = tmp_path / "run"

    def first_step_logged():
        try:
            return any(r.get("step") for r in read_metrics(run_dir))
        except (OSError, ValueError):
            return False

    res = run_to_the_end(train_args(small_tree, run_dir, loader) + ["trainer.epochs=40"], env, marker,
                         kill_child_when=first_step_logged)
    # torch says "is killed by signal: Killed" or "exited unexpectedly", whichever of its checks sees it first
    says = "DALI worker process" if loader == "dali" else "DataLoader worker (pid"
    assert_failed_in_one_line(res, run_dir, marker, says, last_line=loader == "dali")


def test_a_worker_of_an_idle_pipeline_killed_between_passes(tmp_path, small_tree):
    """The validation pipeline is kept between evaluations; a worker of it killed meanwhile makes
    the next pass raise at once (not hang), and the loader still closes. A death that no pass
    raised (the run ended first) is logged when the pipeline closes (helper-68)."""
    script = textwrap.dedent(f"""
        import logging, os, signal, sys, time
        import torch
        from adarem.config import DataConfig
        from adarem.data import build_data
        from adarem.data.datasets import DataError

        cfg = DataConfig(name="folder", root={str(small_tree)!r}, image_size=32, val_resize=36, loader="dali",
                         num_workers=2)
        logging.basicConfig()
        data = build_data(cfg, 4, 0, 1, 0, torch.device("cpu"))
        val = data.val
        assert len(list(val.epoch(0))) == 1
        feed = val._idle[0]
        pids = feed.watch.pids
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while feed.death is None and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu = time.process_time()
        time.sleep(1)
        print("WATCH CPU", round(time.process_time() - cpu, 2))  # the watch waits, it does not spin
        start = time.monotonic()
        try:
            list(val.epoch(1))
        except DataError as exc:
            print("RAISED", exc)
        val.close()
        alive = [p for p in pids if os.path.exists(f"/proc/{{p}}")
                 and open(f"/proc/{{p}}/stat").read().split(")")[-1].split()[0] != "Z"]
        print("ALIVE", alive, "SECONDS", round(time.monotonic() - start, 1))
        # a death never raised (the run ended before its next pass: preempted, say) is still said
        assert len(list(data.train.epoch(0))) == 4
        feed = data.train._idle[0]
        os.kill(feed.watch.pids[1], signal.SIGKILL)
        while feed.death is None and time.monotonic() < deadline + 10:
            time.sleep(0.01)
        data.train.close()
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RAISED DALI worker process " in res.stdout and "was killed by SIGKILL" in res.stdout, res.stdout
    assert "ALIVE [] SECONDS" in res.stdout, res.stdout
    assert float(res.stdout.split("WATCH CPU ")[1].split()[0]) < 0.2, res.stdout
    assert "was killed by SIGKILL" in res.stderr and "(seen as the pipeline was closed)" in res.stderr, res.stderr


def test_lost_worker_error_keeps_torch_s_first_sentence():
    from adarem.data.loader import lost_worker_error

    exited = RuntimeError("DataLoader worker (pid 12) exited unexpectedly with exit code 1. Details are lost due "
                          "to multiprocessing. Rerunning with num_workers=0 may give better error trace.")
    assert str(lost_worker_error(exited)).startswith("DataLoader worker (pid 12) exited unexpectedly with exit code "
                                                     "1, and the data pipeline cannot go on")
    assert lost_worker_error(RuntimeError("CUDA out of memory")) is None
    assert lost_worker_error(ValueError("DataLoader worker (pid 1) is killed by signal: Killed.")) is None


def test_a_dali_worker_killed_while_its_pipeline_starts(tmp_path, env, small_tree):
    """The second worker of the first pipeline dies as it starts, inside DALI's build: DALI then
    terminated the first with SIGTERM, which a worker ignored (train.py's preemption handler), and
    waited for it for good (helper-68). StartupWatch, which holds each worker from its fork, kills it;
    the run fails at once, in one line."""
    marker = f"ADAREM_WORKER_DEATH_TEST={uuid.uuid4().hex}"
    run_dir = tmp_path / "run"
    res = run_to_the_end(train_args(small_tree, run_dir, "dali"), {**env, "ADAREM_FAULT": "dali_start@2"}, marker)
    assert_failed_in_one_line(res, run_dir, marker, "while its pipeline was starting")


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_a_sigterm_to_every_process_of_the_job_still_preempts_the_run(tmp_path, env, small_tree, loader):
    """SLURM's preemption SIGTERM reaches every process of the job step, the loader's workers
    included. A worker ignores it and keeps feeding the last steps: the run checkpoints and exits 75
    (preempted), it does not fail on a worker that ended. DALI's workers ignore it of themselves;
    torch's DataLoader workers died of it (torch's handler), and the run failed, or was left
    "running" in run.json, at whichever write the worker's death interrupted (helper-82)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_args(small_tree, run_dir, loader) + ["trainer.epochs=40"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + LIMIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if sum(1 for r in read_metrics(run_dir) if r.get("type") == "epoch") >= 1:  # both pipelines built
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: still running after {LIMIT_S} s")
    assert proc.returncode == 75, err[-3000:]
    assert read_run(run_dir)["status"] == "preempted"
    assert "worker process" not in err, err[-3000:]
