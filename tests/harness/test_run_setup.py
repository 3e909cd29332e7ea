"""Checks run_setup makes across ranks before the first step."""

from __future__ import annotations

import pytest

from adarem.config import ConfigError
from adarem.run_setup import check_same_optimizer_path


def test_ranks_on_different_optimizer_paths_are_refused_in_one_line():
    check_same_optimizer_path([("fused", None), ("fused", None)])
    check_same_optimizer_path([("foreach", None)])
    with pytest.raises(ConfigError) as err:
        check_same_optimizer_path([("fused", None), ("foreach", None)])
    message = str(err.value)
    assert "\n" not in message and "rank 1: foreach" in message and "optimizer.impl" in message


def test_a_rank_that_cannot_run_the_fused_kernel_is_refused_before_the_first_step():
    """A resumed run restores its fused groups from the checkpoint, so every rank reports "fused"
    even where the kernel cannot be built: the check asks whether each rank can actually step."""
    with pytest.raises(ConfigError, match=r"rank 1 cannot run AdaRem's fused CPU kernel.*no compiler"):
        check_same_optimizer_path([("fused", None), ("fused", "RuntimeError: no compiler")])


def test_the_optimizer_says_when_it_needs_the_missing_kernel(monkeypatch):
    import torch

    import adarem.optim.adarem as adarem_module
    from adarem import AdaRem
    from adarem.optim.factory import fused_cpu_kernel_missing

    w = torch.nn.Parameter(torch.ones(2))
    fused, plain = AdaRem([w], foreach=True), AdaRem([w], foreach=True)
    fused.param_groups[0].update(fused=True, foreach=None)  # as a checkpoint's groups restore it
    monkeypatch.setattr(adarem_module, "cpu_kernel_error", lambda: "RuntimeError: no compiler")
    assert fused_cpu_kernel_missing(fused) == "RuntimeError: no compiler"
    assert fused_cpu_kernel_missing(plain) is None
    assert fused_cpu_kernel_missing(torch.optim.SGD([w], lr=0.1)) is None
