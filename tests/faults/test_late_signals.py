"""Preemption signals that arrive when no training step is left: the run is what it would have been
without the signal (finished, or stopped at its limit), not a preemption that asks for a requeue."""

from __future__ import annotations

import pytest

from tests.conftest import DETERMINISTIC, read_metrics, read_run, run_train

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
