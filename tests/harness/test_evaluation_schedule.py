"""Mid-epoch evaluation (trainer.evals_per_epoch) and BatchNorm recalibration (trainer.bn_recalibrate):
the validation curve gets its resolution and its BN statistics without changing what is trained,
and a preemption at an evaluation point neither loses nor repeats the evaluation."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from adarem.engine import Precision, recalibrated_bn
from tests.conftest import DETERMINISTIC, read_metrics, read_run, run_train

COMMON = DETERMINISTIC  # 2 epochs of 22 steps (FAST)
EVALS = ["trainer.evals_per_epoch=3", "trainer.bn_recalibrate=2"]
TIMING = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")


def strip(rows, types=("iter", "epoch", "eval")):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if r["type"] in types]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env, deterministic_run):
    """The same training evaluated once per epoch with running BN statistics (the shared
    deterministic_run: COMMON), and three times per epoch with recalibrated statistics."""
    run_dir = tmp_path_factory.mktemp("evals") / "run"
    res = run_train(COMMON + EVALS, env, run_dir)
    assert res.returncode == 0, res.stderr
    return {"plain": deterministic_run, "evals": run_dir}


def test_evaluations_are_logged_with_step_and_wall_clock(runs):
    rows = read_metrics(runs["evals"])
    evals = [r for r in rows if "val_top1_err" in r]
    # 22 steps per epoch, 3 evaluations per epoch: after batches 7 and 15, and at the epoch's end
    assert [(r["type"], r["step"]) for r in evals] == [("eval", 7), ("eval", 15), ("epoch", 22),
                                                       ("eval", 29), ("eval", 37), ("epoch", 44)]
    assert [r["epoch_frac"] for r in evals] == pytest.approx([7 / 22, 15 / 22, 1, 1 + 7 / 22, 1 + 15 / 22, 2])
    walls = [r["wall_time_s"] for r in evals]
    assert walls == sorted(walls) and walls[0] > 0
    assert read_run(runs["evals"])["final"]["val_top1_err"] == evals[-1]["val_top1_err"]
    iters = [r for r in rows if r["type"] == "iter"]
    assert all(r["train_loss_window"] > 0 for r in iters)


def test_evaluation_does_not_change_training(runs):
    """Bit-identical training losses and weights; only the evaluations differ."""
    a, b = read_metrics(runs["plain"]), read_metrics(runs["evals"])
    assert strip(a, ("iter",)) == strip(b, ("iter",))
    assert [r["train_loss"] for r in a if r["type"] == "epoch"] == [r["train_loss"] for r in b if r["type"] == "epoch"]
    wa = torch.load(runs["plain"] / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(runs["evals"] / "checkpoint.pt", weights_only=False)["model"]
    # the recalibrated statistics were put back after each evaluation: buffers equal too
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("fault", ["step@15:TERM", "step@15"])
def test_stop_at_an_evaluation_point_resumes_without_loss_or_repeat(tmp_path, env, runs, fault):
    """SIGTERM at step 15 (an evaluation point): the evaluation runs, then the checkpoint; kill -9
    there: the evaluation is redone from the last checkpoint. Either way the record equals the
    uninterrupted run's."""
    run_dir = tmp_path / "run"
    first = run_train(COMMON + EVALS, dict(env, ADAREM_FAULT=fault), run_dir)
    assert first.returncode == (75 if fault.endswith("TERM") else -signal.SIGKILL), first.stderr
    resumed = run_train(COMMON + EVALS, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert strip(read_metrics(run_dir)) == strip(read_metrics(runs["evals"]))


def test_bad_evaluation_settings_are_one_line_errors(env, tmp_path):
    res = run_train(["trainer.evals_per_epoch=0"], env, tmp_path / "a")
    assert res.returncode == 2 and "trainer.evals_per_epoch=0 must be in [1, 1000]" in res.stderr
    res = run_train(["trainer.evals_per_epoch=2", "trainer.eval_every=2"], env, tmp_path / "b")
    assert res.returncode == 2 and "needs trainer.eval_every=1" in res.stderr
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("checkpoint.pt"))


class _Loader:
    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch, start_batch=0):
        return iter((x, torch.zeros(len(x), dtype=torch.long)) for x in self.batches[start_batch:])


def test_recalibrated_bn_uses_the_batches_and_restores_everything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(8, 3) + i for i in range(4)]
    rng = torch.get_rng_state()
    with recalibrated_bn(model, _Loader(batches), 0, 2, Precision(None, None), torch.device("cpu"), False):
        feats = torch.cat([model[0](x) for x in batches[:2]]).detach()
        # an equal-weight average of the two batches' means (momentum None), not the stale 5.0
        assert torch.allclose(model[1].running_mean, feats.mean(0), atol=1e-6)
        assert not model[1].training and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].momentum == 0.1 and model.training
    assert torch.equal(torch.get_rng_state(), rng)  # no random draw: training's stream is untouched
