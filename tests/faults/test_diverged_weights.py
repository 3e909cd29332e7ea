"""Weights that blew up after their step's loss was computed (so every training loss was finite)
are a divergence, not a result: an evaluation of them gives a NaN validation loss and, as an argmax
over NaN logits, a finite top-1 error (~90 % on 10 classes) that was recorded as the run's result."""

from __future__ import annotations

import json
import math

from tests.conftest import copy_run, read_metrics, read_run, run_train

BLOW_UP = ["optimizer=sgd", "optimizer.lr=1e6", "schedule=constant"]  # step 1's update: the weights explode


def _no_result_logged(run_dir):
    lines = read_metrics(run_dir)
    assert not [m for m in lines if "val_loss" in m], [m for m in lines if "val_loss" in m]
    return lines


def test_weights_blown_up_by_the_last_step_are_a_divergence_not_a_finished_run(tmp_path, env):
    """One step in the whole run (1,408 digits at batch 1,024): its loss is finite, its update is not."""
    run_dir = tmp_path / "run"
    res = run_train(BLOW_UP + ["trainer.batch_size=1024", "trainer.epochs=1"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["diverged_at_step"], record["diverged_in"]) == ("diverged", 1, "validation")
    assert record["final"]["val_top1_err"] is None
    assert "DIVERGED: validation loss" in res.stderr and "final top-1 error" not in res.stdout
    lines = _no_result_logged(run_dir)
    (line,) = [m for m in lines if m["type"] == "diverged"]
    assert line["step"] == 1 and line["where"] == "validation" and math.isnan(line["loss"])


def test_a_mid_epoch_evaluation_of_blown_up_weights_is_a_divergence_at_its_step(tmp_path, env):
    """An evaluation after every step: the one after step 1 sees the weights step 1 blew up (step
    2's loss would have said so a step later, after a NaN 'eval' line was logged as a result)."""
    run_dir = tmp_path / "run"
    res = run_train(BLOW_UP + ["trainer.evals_per_epoch=22", "trainer.log_every=1000"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["diverged_at_step"], record.get("diverged_in")) == ("diverged", 1, "validation")
    _no_result_logged(run_dir)


def test_a_finished_record_with_a_nan_final_loss_is_not_reported(tmp_path, env, finished_run):
    """What the previous version left for such a run: finished, val_loss NaN, a finite top-1 error.
    A relaunch reported that error as the run's result ("run already finished; final top-1 error")."""
    run_dir = copy_run(finished_run, tmp_path / "run")
    record = read_run(run_dir)
    record["final"]["val_loss"] = math.nan
    (run_dir / "run.json").write_text(json.dumps(record))
    before = (run_dir / "run.json").read_bytes()
    res = run_train(["trainer.epochs=1"], env, run_dir)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: ") and "final validation loss is nan" in lines[0] and "move that" in lines[0]
    assert (run_dir / "run.json").read_bytes() == before
