"""optimizer.impl: one rule for every optimizer, the chosen path recorded, bad values refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adarem import AdaRem
from adarem.config import ConfigError, OptimizerConfig
from adarem.optim.adarem import cpu_kernel_error
from adarem.optim.factory import build_optimizer, impl_flags, optimizer_impl

NAMES = ["sgd", "adam", "adamw", "adarem"]


def _model():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _cfg(name, **kw):
    return OptimizerConfig(name=name, lr=0.01, weight_decay=1e-4, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_auto_takes_the_fused_path(name):
    """This torch build has fused SGD/Adam/AdamW kernels for the CPU, and AdaRem's C++ kernel
    builds where a compiler is: auto picks the fused path. Either way the optimizer steps."""
    model = _model()
    opt = build_optimizer(_cfg(name), model)
    assert optimizer_impl(opt) == ("foreach" if name == "adarem" and cpu_kernel_error() else "fused")
    assert impl_flags("auto", name, {"cuda"}) == {"fused": True}
    model(torch.randn(5, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", ["foreach", "loop"])
def test_forced_paths(name, impl):
    opt = build_optimizer(_cfg(name, impl=impl), _model())
    assert optimizer_impl(opt) == impl
    assert all(g["foreach"] is (impl == "foreach") and not g.get("fused") for g in opt.param_groups)


def test_loop_gives_adarem_foreach_false():
    opt = build_optimizer(_cfg("adarem", impl="loop"), _model())
    assert isinstance(opt, AdaRem) and all(g["foreach"] is False for g in opt.param_groups)


def test_legacy_flags_still_work_and_are_recorded():
    opt = build_optimizer(_cfg("adamw", foreach=True), _model())
    assert optimizer_impl(opt) == "foreach"
    opt = build_optimizer(_cfg("sgd", foreach=False), _model())
    assert optimizer_impl(opt) == "loop"


def test_unset_flags_are_reported_as_torch_resolves_them():
    params = list(_model().parameters())
    assert optimizer_impl(AdaRem(params)) == "foreach"
    assert optimizer_impl(torch.optim.SGD(params, lr=0.1)) == "loop"  # torch's CPU default


@pytest.mark.parametrize("bad", [dict(impl="fast"), dict(impl="fused", foreach=True),
                                 dict(impl="loop", fused=False)])
def test_bad_impl_is_rejected_with_one_line(bad):
    with pytest.raises(ConfigError) as err:
        _cfg("adarem", **bad)
    assert "optimizer.impl" in str(err.value) and "\n" not in str(err.value)
