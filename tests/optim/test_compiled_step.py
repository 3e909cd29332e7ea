"""torch.compile(opt.step), as torch's "compiling the optimizer" recipe does with AdamW: every
AdaRem path steps as in eager mode, and the compiled step is not recompiled at every step (lambda^t
changes each step; a step specialised on it would recompile until dynamo's limit, then run eager)."""

from __future__ import annotations

import copy

import pytest
import torch

from adarem import AdaRem
from adarem.optim.adarem import cpu_kernel_error

CASES = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "foreach_momentum_l2": dict(foreach=True, momentum=0.9, weight_decay=1e-2, decoupled_weight_decay=False),
    "fused": dict(fused=True),
}


def _twin_models(case: str):
    """Two identical small models (one stepped eagerly, one by a compiled step), fresh dynamo
    caches; skipped where the case's fused CPU kernel cannot be built."""
    if case == "fused" and cpu_kernel_error() is not None:
        pytest.skip(f"the fused CPU kernel cannot be built here: {cpu_kernel_error()}")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return eager, copy.deepcopy(eager)


def _same_gradients(*models) -> None:
    """One batch's gradients in each twin model (the same input)."""
    x = torch.randn(8, 16)
    for model in models:
        model.zero_grad()
        model(x).pow(2).mean().backward()


@pytest.mark.parametrize("case", CASES)
def test_a_compiled_step_follows_the_eager_one_without_recompiling(case):
    eager, compiled = _twin_models(case)
    opt_e = AdaRem(eager.parameters(), lr=0.05, decay=0.9, **CASES[case])
    opt_c = AdaRem(compiled.parameters(), lr=0.05, decay=0.9, **CASES[case])
    step = torch.compile(opt_c.step)
    for i in range(6):
        _same_gradients(eager, compiled)
        opt_e.step()
        if i < 2:  # the first steps compile (the state is created at the first)
            step()
        else:
            with torch._dynamo.config.patch(error_on_recompile=True):
                step()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for p_e, p_c in zip(eager.parameters(), compiled.parameters()):
        s_e, s_c = opt_e.state[p_e], opt_c.state[p_c]
        assert float(s_c["step"]) == float(s_e["step"]) == 6
        torch.testing.assert_close(s_c["exp_avg"], s_e["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s_c["max_abs_exp_avg"], s_e["max_abs_exp_avg"], rtol=1e-5, atol=1e-7)


def test_a_compiled_step_with_eps_zero_and_subnormal_trackers_stays_finite():
    """eps = 0 and gradients of 1e-41: s = max|d| is subnormal and lambda^t / s overflows fp32.
    The compiled step (the foreach path's multi-tensor form) must stay finite, as the eager one."""
    torch._dynamo.reset()
    out = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, generator=gen))
        opt = AdaRem([p], lr=0.1, eps=0.0)
        step = torch.compile(opt.step) if compiled else opt.step
        for _ in range(3):
            p.grad = torch.randn(64, generator=gen) * 1e-41
            step()
        out.append(p.detach().clone())
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0])


TENSOR_LR_CASES = {
    "loop": dict(foreach=False),
    "loop_decoupled": dict(foreach=False, weight_decay=0.1, decoupled_weight_decay=True),
    "foreach": dict(foreach=True),
    "foreach_momentum_decoupled": dict(foreach=True, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True),
    "fused": dict(fused=True),
}


@pytest.mark.parametrize("case", TENSOR_LR_CASES)
def test_a_tensor_lr_changed_every_step_does_not_recompile(case):
    """As for torch's optimizers, a float lr is a constant of the compiled step; a tensor lr, which
    an LR scheduler updates in place, is read by it: a schedule that changes lr at every step then
    compiles once, and the steps follow the eager ones."""
    eager, compiled = _twin_models(case)
    opts = [AdaRem(m.parameters(), lr=torch.tensor(0.05), decay=0.9, **TENSOR_LR_CASES[case])
            for m in (eager, compiled)]
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8) for o in opts]
    step = torch.compile(opts[1].step)
    lrs = []
    for i in range(12):
        _same_gradients(eager, compiled)
        opts[0].step()
        if i < 2:  # the first steps compile (the state is created at the first)
            step()
        else:
            with torch._dynamo.config.patch(error_on_recompile=True):
                step()
        for s in scheds:
            s.step()
        lrs.append(float(opts[1].param_groups[0]["lr"]))
    assert isinstance(opts[1].param_groups[0]["lr"], torch.Tensor)
    assert lrs[-1] == pytest.approx(0.05 * 0.8 ** 12)  # the schedule really ran
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["loop", "foreach"])
def test_a_tensor_lr_of_shape_1_compiles(case):
    """helper-88: lr=torch.tensor([0.05]) (shape (1,)) stepped eagerly but failed compiled ("scalar
    tensor expected to be 0 dim"); it now compiles and follows the eager steps."""
    eager, compiled = _twin_models(case)
    opts = [AdaRem(m.parameters(), lr=torch.tensor([0.05]), decay=0.9, **TENSOR_LR_CASES[case]) for m in (eager, compiled)]
    step = torch.compile(opts[1].step)
    for _ in range(3):
        _same_gradients(eager, compiled)
        opts[0].step()
        step()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
