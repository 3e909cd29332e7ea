"""What the DIVERGED line says of the checkpoints for a validation divergence must be true: an
epoch's end is checkpointed before its evaluation (checkpoint.pt holds the blown-up weights), but
a mid-epoch evaluation runs before any checkpoint of its step, so the last checkpoint predates them."""

from __future__ import annotations

from tests.conftest import read_run, run_train

BLOW_UP = ["optimizer=sgd", "optimizer.lr=1e6", "schedule=constant"]  # step 1's update: the weights explode
HOLDS = "checkpoint.pt holds those weights"


def test_a_mid_epoch_validation_divergence_does_not_say_checkpoint_pt_holds_the_weights(tmp_path, env):
    run_dir = tmp_path / "run"
    res = run_train(BLOW_UP + ["trainer.evals_per_epoch=22", "trainer.log_every=1000"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(run_dir).get("diverged_in") == "validation"
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("DIVERGED:")]
    assert HOLDS not in line and "last good checkpoint is kept" in line, line


def test_an_epoch_end_validation_divergence_says_checkpoint_pt_holds_the_weights(tmp_path, env):
    run_dir = tmp_path / "run"
    res = run_train(BLOW_UP + ["trainer.batch_size=1024", "trainer.epochs=1"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("DIVERGED:")]
    assert HOLDS in line and (run_dir / "checkpoint.pt").exists(), line
