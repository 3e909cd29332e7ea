"""Every experiment preset composes with every optimizer preset (a recipe table that lacks a
variant fails only when someone launches it)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adarem.config import OptimizerConfig, register_configs
from tests.conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_every_optimizer(experiment):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        for opt in OPTIMIZERS:
            cfg = compose("config", overrides=[f"experiment={experiment}", f"optimizer={opt}"])
            resolved = OmegaConf.to_container(cfg.optimizer, resolve=True)  # the recipe tables' lookups
            assert resolved["variant"] == opt and resolved["lr"] > 0
            OptimizerConfig(**resolved)  # and the values pass the schema's checks
