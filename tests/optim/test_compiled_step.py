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


@pytest.mark.parametrize("case", CASES)
def test_a_compiled_step_follows_the_eager_one_without_recompiling(case):
    if case == "fused" and cpu_kernel_error() is not None:
        pytest.skip(f"the fused CPU kernel cannot be built here: {cpu_kernel_error()}")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    compiled = copy.deepcopy(eager)
    opt_e = AdaRem(eager.parameters(), lr=0.05, decay=0.9, **CASES[case])
    opt_c = AdaRem(compiled.parameters(), lr=0.05, decay=0.9, **CASES[case])
    step = torch.compile(opt_c.step)
    for i in range(6):
        x = torch.randn(8, 16)
        for model in (eager, compiled):
            model.zero_grad()
            model(x).pow(2).mean().backward()
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
