"""optimizer.decay_horizon: AdaRem's lambda matched to the run's length (issue 12, item 4)."""

from __future__ import annotations

import math

import pytest
from torch import nn

from adarem.config import ConfigError, OptimizerConfig
from adarem.optim.factory import build_optimizer, resilience_decay
from tests.conftest import read_run, run_train


def test_lambda_reaches_one_percent_at_the_horizon():
    cfg = OptimizerConfig(name="adarem", decay_horizon=0.5)
    lam = resilience_decay(cfg, total_steps=1000)
    assert lam ** 500 == pytest.approx(0.01) and lam ** 499 > 0.01
    assert resilience_decay(OptimizerConfig(name="adarem", decay=0.999), 1000) == 0.999  # horizon 0: as given
    opt = build_optimizer(cfg, nn.Linear(2, 2), total_steps=1000)
    assert opt.defaults["decay"] == lam
    with pytest.raises(ValueError, match="total steps"):
        build_optimizer(cfg, nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "sgd", "decay_horizon": 1.0}, "applies to AdaRem only"),
    ({"name": "adarem", "decay_horizon": -1.0}, "must be in [0, 100]"),
])
def test_bad_horizons_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        OptimizerConfig(**kwargs)


def test_the_lambda_used_is_recorded(env, tmp_path):
    res = run_train(["optimizer=adarem_horizon", "trainer.epochs=1"], env, tmp_path / "run")
    assert res.returncode == 0, res.stderr
    run = read_run(tmp_path / "run")
    steps = run["steps_per_epoch"]  # 1 epoch: lambda^steps = 0.01
    assert run["adarem_decay"] ** steps == pytest.approx(0.01)
    assert math.isclose(run["adarem_decay"], 0.01 ** (1 / steps))
