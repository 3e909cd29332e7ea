"""Checks run_setup makes across ranks before the first step."""

from __future__ import annotations

import pytest

from adarem.config import ConfigError
from adarem.run_setup import check_same_optimizer_path


def test_ranks_on_different_optimizer_paths_are_refused_in_one_line():
    check_same_optimizer_path(["fused", "fused"])
    check_same_optimizer_path(["foreach"])
    with pytest.raises(ConfigError) as err:
        check_same_optimizer_path(["fused", "foreach"])
    message = str(err.value)
    assert "\n" not in message and "rank 1: foreach" in message and "optimizer.impl" in message
