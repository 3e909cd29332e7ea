"""Every AdaRem code path follows the oracle (tests/optim/oracle.py) over hundreds of steps.

On the CPU the fused path is the C++ kernel; one test runs the compiled variant through
Inductor's C++ backend. ``ADAREM_TEST_DEVICE=cuda`` runs the same tests on a GPU
(scripts/gpu_check.sh does), where the fused path is compiled through Triton.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import zlib

import pytest
import torch

import adarem.optim.adarem as adarem_module
from adarem import AdaRem
from tests.optim.oracle import DEFAULTS, OracleAdaRem

# Mixed shapes, including 0-dim and empty; index 6 always gets an all-zero gradient and index 7
# gets no gradient at all on every third step (its step count then lags the others).
SHAPES = [(), (0,), (5,), (4, 3), (2, 3, 4), (17,), (3, 3), (8,)]
ZERO_GRAD, SOMETIMES_NONE = 6, 7
DEVICE = torch.device(os.environ.get("ADAREM_TEST_DEVICE", "cpu"))
# foreach_mt: the foreach path's multi-tensor variant (the one non-CPU devices run), forced on
PATHS = ["loop", "foreach", "foreach_mt", "fused"]
FLAGS = {"loop": dict(foreach=False), "foreach": dict(foreach=True),
         "foreach_mt": dict(foreach=True), "fused": dict(fused=True)}

OPTION_SETS = {
    "defaults": {},
    # heavy-ball AdaRem is stable only at small lr * curvature (see the optimizer's docstring)
    "momentum": {"momentum": 0.9, "lr": 0.01},
    "nodecay": {"decay": 1.0},
    "l2": {"weight_decay": 0.05},
    "decoupled": {"weight_decay": 0.05, "decoupled_weight_decay": True},
    "maximize": {"maximize": True},
    "eps0": {"eps": 0.0},
    "everything": {"momentum": 0.5, "decay": 0.99, "weight_decay": 0.01,
                   "decoupled_weight_decay": True, "maximize": True, "beta": 0.5},
}


@pytest.fixture(autouse=True)
def _foreach_variant(request, monkeypatch):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("path") == "foreach_mt":
        monkeypatch.setattr(adarem_module, "FOREACH_TENSOR_MAJOR", False)
    if (callspec is not None and callspec.params.get("path") == "fused" and DEVICE.type == "cpu"
            and shutil.which(os.environ.get("CXX", "c++")) is None):
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")


class Problem:
    """A random, mildly non-convex problem whose gradient is a function of (theta, step)."""

    def __init__(self, seed: int, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)
        self.init = [torch.randn(s, generator=gen).to(DEVICE, dtype) for s in SHAPES]
        self.curv = [(torch.rand(s, generator=gen) * 2 + 0.1).to(DEVICE, dtype) for s in SHAPES]
        self.target = [torch.randn(s, generator=gen).to(DEVICE, dtype) for s in SHAPES]
        self.phase = [(torch.rand(s, generator=gen) * 6).to(DEVICE, dtype) for s in SHAPES]

    def grads(self, params, step: int, maximize: bool):
        out = []
        for i, p in enumerate(params):
            if i == SOMETIMES_NONE and step % 3 == 2:
                out.append(None)
                continue
            g = self.curv[i] * (p.detach() - self.target[i]) + 0.3 * torch.sin(step * 0.7 + self.phase[i])
            if i == ZERO_GRAD:
                g = torch.zeros_like(g)
            # with maximize the optimizer ascends; feed it -grad so that it still minimises
            out.append(-g if maximize else g)
        return out


def _groups(params, options):
    """Three parameter groups: the options, the options with another lr/beta, and defaults
    (maximize is shared by all groups, since the problem feeds every tensor a negated gradient)."""
    return [
        {"params": params[:3], **options},
        {"params": params[3:6], **options, "lr": 0.3 * options.get("lr", 0.1), "beta": 0.8},
        {"params": params[6:], "maximize": options.get("maximize", False)},
    ]


def _hparams_of(group):
    return {k: group[k] for k in DEFAULTS}


def run_oracle(problem, options, steps):
    params = [t.clone() for t in problem.init]
    groups = _groups(params, options)
    resolved = [{**DEFAULTS, **{k: v for k, v in g.items() if k != "params"}} for g in groups]
    oracle = OracleAdaRem()
    index = {id(p): i for i, p in enumerate(params)}
    for step in range(steps):
        grads = problem.grads(params, step, options.get("maximize", False))
        for g, h in zip(groups, resolved):
            for p in g["params"]:
                i = index[id(p)]
                oracle.step_tensor(i, p, grads[i], h)
    return params


def run_impl(problem, options, steps, path, roundtrip_at=None):
    params = [t.clone().requires_grad_() for t in problem.init]
    flags = FLAGS[path]
    opt = AdaRem(_groups(params, options), **flags)
    for step in range(steps):
        if step == roundtrip_at:
            saved = copy.deepcopy(opt.state_dict())
            opt = AdaRem(_groups(params, options), **flags)
            opt.load_state_dict(saved)
        for p, g in zip(params, problem.grads(params, step, options.get("maximize", False))):
            p.grad = g
        opt.step()
    return [p.detach() for p in params], opt


def _assert_close(actual, expected, rtol, atol):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_path_follows_oracle(path, name):
    options = OPTION_SETS[name]
    problem = Problem(seed=zlib.crc32(name.encode()) % 1000)
    expected = run_oracle(problem, options, steps=300)
    actual, opt = run_impl(problem, options, steps=300, path=path, roundtrip_at=150)
    _assert_close(actual, expected, rtol=2e-5, atol=2e-6)
    # the trajectory moved: a path that did nothing would not match a moving oracle anyway,
    # but make it explicit
    assert not torch.allclose(actual[4], problem.init[4])
    # the step count lags for the tensor that sometimes has no gradient; empty tensors have no state
    params = [p for g in opt.param_groups for p in g["params"]]
    assert int(opt.state[params[SOMETIMES_NONE]]["step"]) == 200
    assert int(opt.state[params[2]]["step"]) == 300
    assert params[1] not in opt.state


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_roundtrip_does_not_change_trajectory(path):
    problem = Problem(seed=7)
    options = OPTION_SETS["everything"]
    straight, _ = run_impl(problem, options, steps=120, path=path)
    resumed, _ = run_impl(problem, options, steps=120, path=path, roundtrip_at=60)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_parameters_follow_oracle(dtype, path):
    """In fp16/bf16 rounding differs between any two orderings of the same math, so the test is:
    the path lands as close to the fp32 oracle as the oracle itself run in low precision does."""
    problem = Problem(seed=11, dtype=dtype)
    options = {"momentum": 0.9, "lr": 0.01, "weight_decay": 0.01}
    problem32 = copy.deepcopy(problem)
    for name in ("init", "curv", "target", "phase"):
        setattr(problem32, name, [t.float() for t in getattr(problem, name)])
    exact = run_oracle(problem32, options, steps=60)
    oracle_low = run_oracle(problem, options, steps=60)
    actual, opt = run_impl(problem, options, steps=60, path=path)

    def err(xs):
        return max(float((x.float() - e).abs().max()) for x, e in zip(xs, exact) if e.numel())

    scale = max(float(e.abs().max()) for e in exact if e.numel())
    assert err(actual) <= 2 * err(oracle_low) + 1e-3 * scale, (err(actual), err(oracle_low))
    assert all(a.dtype == dtype for a in actual)
    for group in opt.param_groups:
        for p in group["params"]:
            if p in opt.state:
                assert opt.state[p]["exp_avg"].dtype == dtype
                assert ("momentum_buffer" in opt.state[p]) == (group["momentum"] > 0)
                if group["momentum"] > 0:
                    assert opt.state[p]["momentum_buffer"].dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_lr_and_momentum_are_not_rounded(dtype, path):
    """lr 0.1 and momentum 0.9 act as given on fp16/bf16 parameters, not rounded to the parameter's
    dtype (torch's CPU add(..., alpha=) does that: bf16 0.10009765625 and 0.8984375, a systematic
    bias); the arithmetic is fp32 and rounds once, into the stored tensor. With the resilience off
    (decay ~ 0, so delta = g) step 1 gives theta - lr*g1 and u = g1, step 2 u = mu*g1 + g2."""
    n = 4096
    gen = torch.Generator().manual_seed(0)
    theta, g1, g2 = ((torch.randn(n, generator=gen) * 4).to(dtype) for _ in range(3))
    p = theta.clone().to(DEVICE).requires_grad_()
    opt = AdaRem([p], lr=0.1, momentum=0.9, decay=1e-30, **FLAGS[path])
    p.grad = g1.to(DEVICE)
    opt.step()
    p1 = p.detach().cpu().clone()
    p.grad = g2.to(DEVICE)
    opt.step()
    u2 = opt.state[p]["momentum_buffer"].cpu()
    # exactly rounded references; rounding in fp32 first may differ from them only at rare ties
    exact_p1 = (theta.double() - 0.1 * g1.double()).to(dtype)
    exact_u2 = (0.9 * g1.double() + g2.double()).to(dtype)
    assert int((p1 != exact_p1).sum()) <= n // 1000
    assert int((u2 != exact_u2).sum()) <= n // 1000


@pytest.mark.parametrize("path", PATHS)
def test_float64_follows_oracle_to_float64_rounding(path):
    """Per-tensor scalars are computed in the parameter's precision: no fp32 rounding in fp64."""
    problem = Problem(seed=13, dtype=torch.float64)
    options = {"decay": 1.0, "weight_decay": 0.01}
    expected = run_oracle(problem, options, steps=150)
    actual, _ = run_impl(problem, options, steps=150, path=path)
    for a, e in zip(actual, expected):
        if e.numel():
            assert float((a - e).norm() / e.norm().clamp_min(1e-30)) < 1e-10


@pytest.mark.parametrize("path", PATHS)
def test_many_groups_with_distinct_hyperparameters(path):
    """20 groups (as layer-wise lr decay makes), each with its own lr, beta, decay, weight decay
    and mode: every path follows the oracle and the fused path compiles once, not per group."""
    gen = torch.Generator().manual_seed(20)
    params = [torch.randn(3 + i % 4, 2, generator=gen).to(DEVICE) for i in range(20)]
    groups_h = [{"lr": 0.02 * (1 + i % 5), "beta": 0.5 + 0.02 * i, "decay": 0.99 + 0.0005 * i,
                 "weight_decay": 0.01 * (i % 3), "decoupled_weight_decay": i % 2 == 0,
                 "momentum": 0.5 if i % 4 == 0 else 0.0} for i in range(20)]
    curv = [torch.rand(p.shape, generator=gen).to(DEVICE) + 0.5 for p in params]
    oracle, ref = OracleAdaRem(), [p.clone() for p in params]
    mine = [p.clone().requires_grad_() for p in params]
    flags = FLAGS[path]
    opt = AdaRem([{"params": [p], **h} for p, h in zip(mine, groups_h)], **flags)
    for step in range(40):
        for i, h in enumerate(groups_h):
            oracle.step_tensor(i, ref[i], curv[i] * ref[i] + math.sin(step + i), {**DEFAULTS, **h})
            mine[i].grad = curv[i] * mine[i].detach() + math.sin(step + i)
        opt.step()
    _assert_close([p.detach() for p in mine], ref, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="on CUDA the fused tests above run this code")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="Inductor's C++ backend needs a compiler")
@pytest.mark.parametrize("name", ["everything", "momentum"])
def test_compiled_fused_path_follows_oracle_on_cpu(name, monkeypatch):
    """The compiled fused path (the code CUDA runs through Triton) compiled by Inductor's C++
    backend instead of the CPU kernel: same oracle, also in float64 to fp64 rounding."""
    monkeypatch.setattr(adarem_module, "FUSED_CPU_KERNEL", False)
    options = OPTION_SETS[name]
    problem = Problem(seed=zlib.crc32(name.encode()) % 1000)
    actual, _ = run_impl(problem, options, steps=100, path="fused", roundtrip_at=50)
    _assert_close(actual, run_oracle(problem, options, steps=100), rtol=2e-5, atol=2e-6)
    problem64 = Problem(seed=13, dtype=torch.float64)
    actual64, _ = run_impl(problem64, options, steps=60, path="fused")
    for a, e in zip(actual64, run_oracle(problem64, options, steps=60)):
        if e.numel():
            assert float((a - e).norm() / e.norm().clamp_min(1e-30)) < 1e-10


def test_loop_and_foreach_agree_closely():
    problem = Problem(seed=5)
    a, _ = run_impl(problem, OPTION_SETS["everything"], steps=300, path="loop")
    b, _ = run_impl(problem, OPTION_SETS["everything"], steps=300, path="foreach")
    _assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_first_step_is_plain_sgd_and_zero_grad_tensor_decays():
    """At t = 1 d is zero, so r = 1: the first update is exactly -lr * g."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    z = torch.nn.Parameter(torch.ones(4))
    opt = AdaRem([p, z], lr=0.5)
    p.grad = torch.tensor([0.2, -0.4, 0.0])
    z.grad = torch.zeros(4)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.8, 3.0]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.02, -0.04, 0.0]))
    # an all-zero gradient leaves the weight alone and the tracker at zero (it decays from zero)
    assert torch.equal(z.detach(), torch.ones(4))
    assert torch.equal(opt.state[z]["exp_avg"], torch.zeros(4))
    # second step: g agrees with d in sign for the first two weights -> steps grow
    p.grad = torch.tensor([0.2, -0.4, 0.0])
    opt.step()
    lam = 0.999 ** 2
    s = 0.04
    r = torch.tensor([1 + lam * 0.02 / (s + 1e-8), 1 + lam * 0.04 / (s + 1e-8), 1.0])
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.8, 3.0]) - 0.5 * r * p.grad)


def test_max_cache_is_rebuilt_when_missing():
    problem = Problem(seed=1)
    _, opt = run_impl(problem, {}, steps=20, path="foreach")
    sd = opt.state_dict()
    for st in sd["state"].values():
        st.pop("max_abs_exp_avg")
    expected = {k: v["exp_avg"].abs().max() for k, v in opt.state_dict()["state"].items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    opt2 = AdaRem(_groups(params, {}))
    opt2.load_state_dict(sd)
    for p in params:
        p.grad = torch.zeros_like(p)
    before = {i: opt2.state[p]["exp_avg"].abs().max() for i, p in enumerate(params) if p in opt2.state}
    opt2._init_group(opt2.param_groups[0], [], [], [], [], [], [])
    for i, p in enumerate(params[:3]):
        if p in opt2.state:
            assert math.isclose(float(opt2.state[p]["max_abs_exp_avg"]), float(before[i]))
    assert expected  # there was state to rebuild


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["l2", "maximize", "everything"])
def test_step_leaves_the_callers_grad_alone(path, name):
    """Like torch's SGD/Adam (maximize=False), the step reads .grad and never writes it; the
    foreach path's reusable scratch buffers are not part of the state_dict."""
    problem = Problem(seed=3)
    params = [t.clone().requires_grad_() for t in problem.init]
    opt = AdaRem(_groups(params, OPTION_SETS[name]), **FLAGS[path])
    for step in range(3):
        grads = problem.grads(params, step, OPTION_SETS[name].get("maximize", False))
        for p, g in zip(params, grads):
            p.grad = g
        kept = [None if g is None else g.clone() for g in grads]
        opt.step()
        for p, g in zip(params, kept):
            assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    saved = opt.state_dict()
    assert all(set(st) <= {"step", "exp_avg", "max_abs_exp_avg", "momentum_buffer"}
               for st in saved["state"].values())


@pytest.mark.parametrize("path", PATHS + ["fused_compiled"])
def test_momentum_switched_off_and_on_again_follows_oracle(path, monkeypatch):
    """While a group's momentum is 0 the rule does not touch u, so when it is switched on again u
    continues from where it was. The fused paths (CPU kernel and compiled) kept stepping a buffer
    that existed with mu = 0, as u <- 0*u + delta, and then continued from the last delta."""
    if path == "fused_compiled":
        if DEVICE.type != "cpu" or shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("the compiled fused path on the CPU needs Inductor's C++ backend (CUDA runs it as 'fused')")
        monkeypatch.setattr(adarem_module, "FUSED_CPU_KERNEL", False)
    flags = FLAGS["fused" if path == "fused_compiled" else path]
    init = torch.linspace(-1, 1, 8, dtype=torch.float64).to(DEVICE)
    p, ref = init.clone().requires_grad_(), init.clone()
    opt, oracle = AdaRem([p], lr=0.05, momentum=0.9, **flags), OracleAdaRem()
    for i in range(15):
        mu = 0.0 if 5 <= i < 10 else 0.9
        opt.param_groups[0]["momentum"] = mu
        p.grad = torch.sin(p.detach() * 3 + i)
        oracle.step_tensor(0, ref, torch.sin(ref * 3 + i), {**DEFAULTS, "lr": 0.05, "momentum": mu})
        opt.step()
    torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["foreach", "foreach_mt", "fused"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_low_precision_decoupled_weight_decay_rounds_theta_once(dtype, path, momentum):
    """With decoupled weight decay an fp16/bf16 theta is rounded once per step, as in the loop path
    ((1 - lr*w)*theta - lr*delta in fp32, stored once). The foreach paths (and the fused one, which
    hands fp16/bf16 to foreach on the CPU) multiplied theta by 1 - lr*w in place first, rounding it
    twice: after 100 steps fp16 landed 5.7x (tensor-major) and 8x (multi-tensor) farther from the
    exact trajectory than the loop path, bf16 1.5x."""
    gen = torch.Generator().manual_seed(0)
    init, target = torch.randn(20000, generator=gen) * 3, torch.randn(20000, generator=gen)
    options = dict(lr=0.1 if momentum == 0 else 0.01, momentum=momentum, weight_decay=0.05,
                   decoupled_weight_decay=True)

    def grad(theta, i):
        return (theta - target.to(theta)) * 0.5 + 0.01 * math.sin(i)

    exact, oracle = init.double().to(DEVICE), OracleAdaRem()
    for i in range(100):
        oracle.step_tensor(0, exact, grad(exact, i), {**DEFAULTS, **options})

    def error(p_flags):
        p = init.to(DEVICE, dtype).requires_grad_()
        opt = AdaRem([p], **options, **p_flags)
        for i in range(100):
            p.grad = grad(p.detach().float(), i).to(dtype)
            opt.step()
        return float((p.detach().double() - exact).abs().mean())

    assert error(FLAGS[path]) <= 1.1 * error(FLAGS["loop"])


@pytest.mark.parametrize("path", PATHS + ["fused_compiled"])
def test_one_group_of_mixed_dtypes_follows_oracle_per_dtype(path, monkeypatch):
    """fp32, fp64 and bf16 tensors in one group: each is stepped in its own precision (the paths
    split a group by dtype; a per-group scalar taken from the first tensor's dtype would cost the
    fp64 tensor its fp64 rounding)."""
    if path == "fused_compiled":
        if DEVICE.type != "cpu" or shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("the compiled fused path on the CPU needs Inductor's C++ backend (CUDA runs it as 'fused')")
        monkeypatch.setattr(adarem_module, "FUSED_CPU_KERNEL", False)
    flags = FLAGS["fused" if path == "fused_compiled" else path]
    gen = torch.Generator().manual_seed(4)
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float64]
    init = [torch.randn(6, 5, generator=gen).to(DEVICE, dt) for dt in dtypes]
    params = [t.clone().requires_grad_() for t in init]
    refs = [t.double() for t in init]
    options = dict(lr=0.05, momentum=0.5, weight_decay=0.01, decay=0.99)
    opt, oracle = AdaRem(params, **options, **flags), OracleAdaRem()
    for i in range(40):
        for k, (p, r) in enumerate(zip(params, refs)):
            p.grad = (torch.sin(p.detach().double() * 2 + i + k)).to(p.dtype)
            oracle.step_tensor(k, r, torch.sin(r * 2 + i + k) if dtypes[k] == torch.float64
                               else p.grad.double(), {**DEFAULTS, **options})
        opt.step()
    for k, (p, r) in enumerate(zip(params, refs)):
        err = float((p.detach().double() - r).abs().max())
        bound = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 0.1}[dtypes[k]]
        assert err < bound, (dtypes[k], err)


@pytest.mark.parametrize("path", PATHS)
def test_extreme_but_finite_gradients_stay_finite(path):
    """The rule's step is finite here on every path. The CPU foreach path formed c*|g| first (c =
    decay^t / (s + eps) ~ 1e8 at s = 0): a gradient of 1e31 overflowed to inf * 0 = NaN. Its
    tracker update lerp(d, g) = d + (1-beta)*(g - d) overflowed in g - d for huge d and g of
    opposite signs (d = +inf; the rule: -7.5e37)."""
    p = torch.nn.Parameter(torch.zeros(3, device=DEVICE))
    opt = AdaRem([p], lr=1e-31, **FLAGS[path])
    p.grad = torch.tensor([1e31, 1.0, -4e30], device=DEVICE)
    opt.step()
    torch.testing.assert_close(p.detach().cpu(), torch.tensor([-1.0, -1e-31, 0.4]))
    q = torch.nn.Parameter(torch.zeros(3, device=DEVICE))
    opt = AdaRem([q], lr=1e-30, beta=0.5, **FLAGS[path])
    for g in (1e30, 3e38, -3e38):
        q.grad = torch.full((3,), g, device=DEVICE)
        opt.step()
    torch.testing.assert_close(opt.state[q]["exp_avg"].cpu(), torch.full((3,), -7.5e37))


@pytest.mark.parametrize("path", PATHS)
def test_an_infinite_gradient_element_leaves_the_others_finite(path):
    """The rule (the oracle): an inf gradient element makes its own weight non-finite; s = max|d| =
    inf then gives the other elements b = 0, a plain SGD step. The foreach paths' lerp made that
    element's tracker inf - inf = NaN, so s was NaN and every weight of the tensor NaN."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(6)]
    grads[1][0] = math.inf
    params, oracle = _both(grads, dict(lr=0.1, momentum=0.5), path)
    assert not math.isfinite(params[0][0]) and torch.isfinite(params[0][1:]).all()
    torch.testing.assert_close(params[0][1:], oracle[1:], rtol=1e-12, atol=1e-12)


def _both(grads, options, path):
    p = torch.nn.Parameter(torch.zeros(6, device=DEVICE, dtype=torch.float64))
    opt = AdaRem([p], **options, **FLAGS[path])
    ref, theta, h = OracleAdaRem(), torch.zeros(6, dtype=torch.float64), {**DEFAULTS, **options}
    for g in grads:
        p.grad = g.to(DEVICE)
        opt.step()
        ref.step_tensor(0, theta, g.clone(), h)
    return [p.detach().cpu()], theta
