"""Preemption signals that arrive when no training step is left: the run is what it would have been
without the signal (finished, or stopped at its limit), not a preemption that asks for a requeue."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import DETERMINISTIC, copy_run, read_metrics, read_run, run_train, torchrun

TIMING = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("fault", ["eval@1:TERM", "after_eval@1:USR1"])
def test_a_signal_during_or_after_the_last_evaluation_finishes_the_run(tmp_path, env, deterministic_run, fault):
    """SIGTERM in the middle of the last epoch's evaluation, SIGUSR1 right after it was logged:
    every epoch is trained and evaluated, so the run finishes (exit 0, status finished, the
    uninterrupted run's record). It was recorded preempted with exit 75, asking the scheduler for
    a requeue that only wrote "finished"; without one the run stayed preempted, out of the tables."""
    run_dir = tmp_path / "run"
    res = run_train(DETERMINISTIC, dict(env, ADAREM_FAULT=fault), run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert record["status"] == "finished" and "stop_reason" not in record, record.get("status")
    assert record["final"] == read_run(deterministic_run)["final"]
    assert _strip(read_metrics(run_dir)) == _strip(read_metrics(deterministic_run))
    assert "preempted" not in res.stderr


SUBMITIT_STANDIN = """import runpy, signal, sys
marker = sys.argv[1]
signal.signal(signal.SIGUSR2, lambda s, f: open(marker, "a").write("requeued\\n"))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("limit, fault, code, requeued", [(5, "step@5:USR2", 0, False), (10, "step@4:USR2", 75, True)])
def test_submitit_requeues_only_a_preempted_run(tmp_path, env, stopped_run, limit, fault, code, requeued):
    """Inside a submitit job its signal (SIGUSR2) is handed to submitit's handler, which requeues
    the job, only when the run was preempted (exit 75). A signal on trainer.max_steps's step stops
    the run as the limit would (exit 0, stopped): it was handed over all the same, and the job was
    requeued to train nothing. The handler here is a stand-in that notes its call."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3
    marker, wrapper = tmp_path / "requeued", tmp_path / "job.py"
    wrapper.write_text(SUBMITIT_STANDIN)
    res = run_train([f"trainer.max_steps={limit}"], dict(env, ADAREM_FAULT=fault, SUBMITIT_FOLDER=str(tmp_path)),
                    run_dir, launcher=[sys.executable, str(wrapper), str(marker)])
    assert res.returncode == code, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == ("preempted" if code else "stopped")
    assert marker.exists() == requeued


@pytest.mark.slow
def test_a_signal_that_reached_one_rank_is_named_in_the_record(tmp_path, env):
    """SIGUSR1 reaches rank 1 alone (ranks get a scheduler's signal at different times): every rank
    stops after the same step, and run.json, which rank 0 writes, names the signal (it said "peer",
    rank 0's view, though the signal was known to the ranks' collective decision)."""
    run_dir = tmp_path / "ddp"
    res = run_train(["trainer.stop_check_every=10"], dict(env, ADAREM_FAULT="step@3:USR1", ADAREM_FAULT_RANK="1"),
                    run_dir, launcher=torchrun(2), timeout=240)
    assert res.returncode != 0  # torchrun's own failure code for the workers' 75
    record = read_run(run_dir)
    assert (record["status"], record["stop_reason"], record["signal"]) == ("preempted", "preempt", "SIGUSR1")
    assert record["stopped_at_step"] == 10  # trainer.stop_check_every's first decision after step 3
    assert "preempted at step 10 (signal SIGUSR1)" in res.stderr
