"""AdaRem as a drop-in torch optimizer: convergence, the resilience property, API conventions."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from adarem import AdaRem


def _quadratic(curvatures: torch.Tensor, lr: float, steps: int, make):
    x = torch.nn.Parameter(torch.ones_like(curvatures))
    opt = make([x], lr)
    updates = []
    for _ in range(steps):
        prev = x.detach().clone()
        x.grad = curvatures * x.detach()
        opt.step()
        updates.append(x.detach() - prev)
    return x.detach(), torch.stack(updates)


def _sign_flip_fraction(updates: torch.Tensor) -> float:
    s = torch.sign(updates)
    both = (s[1:] != 0) & (s[:-1] != 0)
    return float(((s[1:] != s[:-1]) & both).sum() / both.sum())


def test_converges_on_convex_quadratic():
    curv = torch.linspace(0.5, 2.0, 20)
    x, _ = _quadratic(curv, 0.3, 300, lambda p, lr: AdaRem(p, lr=lr))
    assert float(x.abs().max()) < 1e-6


def test_fewer_update_sign_flips_than_sgd_on_ill_conditioned_quadratic():
    """The property AdaRem exists for: where SGD oscillates, AdaRem damps the oscillation."""
    curv = torch.linspace(1.0, 10.0, 50)
    lr = 0.15  # lr * L_max = 1.5: plain SGD oscillates on the stiff weights, but converges
    x_sgd, up_sgd = _quadratic(curv, lr, 200, lambda p, lr: torch.optim.SGD(p, lr=lr))
    x_ada, up_ada = _quadratic(curv, lr, 200, lambda p, lr: AdaRem(p, lr=lr))
    assert float(x_sgd.abs().max()) < 1e-3 and float(x_ada.abs().max()) < 1e-3  # both converge
    flips_sgd, flips_ada = _sign_flip_fraction(up_sgd), _sign_flip_fraction(up_ada)
    assert flips_sgd > 0.2  # the stiff weights really oscillate under SGD
    assert flips_ada < 0.75 * flips_sgd, (flips_ada, flips_sgd)


def test_stability_limit_is_lower_than_sgd():
    """Documented, not hidden: the step can reach (1 + lambda^t) * lr, so at lr * L = 1.8 SGD
    converges on a quadratic while AdaRem (momentum 0) does not."""
    curv = torch.tensor([1.0, 1.0, 1.0])
    x_sgd, _ = _quadratic(curv, 1.8, 300, lambda p, lr: torch.optim.SGD(p, lr=lr))
    x_ada, _ = _quadratic(curv, 1.8, 300, lambda p, lr: AdaRem(p, lr=lr))
    assert float(x_sgd.abs().max()) < 1e-6
    assert not float(x_ada.abs().max()) < 1e-3


def test_heavy_ball_adarem_needs_a_much_smaller_lr_than_sgd_momentum():
    """Documented, not hidden: with momentum 0.9 the resilience feeds the oscillation of the
    heavy ball; at lr * L = 0.5, SGD with momentum 0.9 converges and adarem_m does not."""
    curv = torch.tensor([1.0, 1.0, 1.0])
    x_sgd, _ = _quadratic(curv, 0.5, 500, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
    x_ada, _ = _quadratic(curv, 0.5, 500, lambda p, lr: AdaRem(p, lr=lr, momentum=0.9))
    x_small, _ = _quadratic(curv, 0.02, 500, lambda p, lr: AdaRem(p, lr=lr, momentum=0.9))
    assert float(x_sgd.abs().max()) < 1e-6
    assert not float(x_ada.abs().max()) < 1.0
    assert float(x_small.abs().max()) < 1e-3


def test_resilience_factor_stays_in_bounds():
    """r = -delta_theta / (lr * g) must lie in [1 - lambda^t, 1 + lambda^t] for every weight."""
    torch.manual_seed(0)
    decay, lr = 0.97, 0.05
    x = torch.nn.Parameter(torch.randn(200))
    opt = AdaRem([x], lr=lr, decay=decay)
    seen_low = seen_high = False
    for t in range(1, 121):
        g = x.detach() * torch.rand(200) * 3 + 0.5 * torch.randn(200)
        prev = x.detach().clone()
        x.grad = g
        opt.step()
        mask = g.abs() > 1e-3
        r = (prev - x.detach())[mask] / (lr * g[mask])
        lam = decay ** t
        assert float(r.min()) >= 1 - lam - 1e-4 and float(r.max()) <= 1 + lam + 1e-4, t
        seen_low |= float(r.min()) < 1 - 0.5 * lam
        seen_high |= float(r.max()) > 1 + 0.5 * lam
    assert seen_low and seen_high  # the factor really moves in both directions


def test_logistic_regression_on_digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = AdaRem(model.parameters(), lr=0.5)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    accuracy = float((model(X).argmax(1) == y).float().mean())
    assert losses[-1] < 0.25 * losses[0]
    assert accuracy > 0.93


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(beta=1.0), "beta"), (dict(beta=-0.1), "beta"),
    (dict(decay=0.0), "decay"), (dict(decay=1.5), "decay"), (dict(momentum=1.0), "momentum"),
    (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.1), "weight_decay"), (dict(lr=float("nan")), "lr"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: "):
        AdaRem([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_bad_per_group_hyperparameter_raises():
    with pytest.raises(ValueError, match="Invalid beta: 2"):
        AdaRem([{"params": [torch.nn.Parameter(torch.ones(2))], "beta": 2}])


def test_sparse_gradients_and_complex_parameters_are_rejected():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = AdaRem(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    with pytest.raises(ValueError, match="complex parameters"):
        AdaRem([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])


def test_closure_zero_grad_and_lr_scheduler():
    x = torch.nn.Parameter(torch.tensor([3.0]))
    opt = AdaRem([x], lr=0.1, decay=1e-9)  # decay ~ 0: after step 1 the rule is plain SGD
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 9.0  # the closure's loss, still attached to its graph
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05
    before = float(x.detach())
    opt.step(closure)
    assert float(x.detach()) == pytest.approx(before - 0.05 * 2 * before, rel=1e-6)
    opt.zero_grad()
    assert x.grad is None


def test_grad_scaler_and_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = AdaRem(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    X, y = torch.randn(64, 8), torch.randn(64, 1)
    first = None
    for _ in range(60):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(X).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.7 * first
    # an inf gradient makes GradScaler skip the step: weights and AdaRem state stay untouched
    w = model[0].weight.detach().clone()
    steps = int(opt.state[model[0].weight]["step"])
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    scaler.step(opt)
    assert torch.equal(model[0].weight.detach(), w)
    assert int(opt.state[model[0].weight]["step"]) == steps


def test_timm_factory_builds_adarem_variants():
    from timm.optim import create_optimizer_v2

    from adarem.optim import register_with_timm

    register_with_timm()
    model = torch.nn.Linear(4, 2)
    plain = create_optimizer_v2(model, "adarem", lr=0.1, weight_decay=1e-4)
    assert isinstance(plain, AdaRem)
    assert all(g["momentum"] == 0.0 for g in plain.param_groups)
    assert {g["weight_decay"] for g in plain.param_groups} == {0.0, 1e-4}  # bias excluded
    m = create_optimizer_v2(model, "adaremm", lr=0.1)
    assert all(g["momentum"] == 0.9 for g in m.param_groups)
    nd = create_optimizer_v2(model, "adaremnodecay", lr=0.1)
    assert all(g["decay"] == 1.0 for g in nd.param_groups)


@pytest.mark.parametrize("name, given, expected", [
    ("adaremm", {"momentum": 0.5}, 0.5),  # the caller's momentum, not the variant's 0.9
    ("adaremm", {}, 0.9),                 # timm's default momentum: the variant's
    ("adarem", {}, 0.0),
    ("adarem", {"momentum": 0.0}, 0.0),
    ("adarem", {"momentum": 0.9}, 0.0),   # timm's default, which timm's train.py always passes
    ("adaremnodecay", {"momentum": 0.9}, 0.0),
    ("adarem", {"momentum": 0.5}, "use 'adaremm'"),
    ("adaremnodecay", {"momentum": 0.3}, "use 'adaremm'"),
])
def test_timm_uses_or_refuses_the_callers_momentum(name, given, expected):
    """timm hands its momentum argument only to optimizers registered with has_momentum and drops
    it silently for the others: every variant takes it, and uses it or says why not."""
    from timm.optim import create_optimizer_v2

    from adarem.optim import register_with_timm

    register_with_timm()
    model = torch.nn.Linear(4, 2)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=rf"{name!r} is AdaRem without momentum.*{expected}"):
            create_optimizer_v2(model, name, lr=0.1, **given)
        return
    opt = create_optimizer_v2(model, name, lr=0.1, **given)
    assert isinstance(opt, AdaRem) and {g["momentum"] for g in opt.param_groups} == {expected}


@pytest.mark.parametrize("flags", [dict(foreach=False), dict(foreach=True), dict(fused=True)],
                         ids=["loop", "foreach", "fused"])
def test_an_infinite_gradient_gives_non_finite_weights_on_every_path(flags):
    """Documented, not hidden: the rule gives -inf where the gradient is +inf; the fast paths'
    g + c*d*|g| may give inf - inf = NaN instead. Either way the weight is not finite."""
    if flags.get("fused"):
        from adarem.optim.adarem import cpu_kernel_error
        if cpu_kernel_error() is not None:
            pytest.skip(f"the fused CPU kernel cannot be built here: {cpu_kernel_error()}")
    w = torch.nn.Parameter(torch.ones(3))
    opt = AdaRem([w], **flags)
    w.grad = torch.tensor([-1.0, 1.0, 1.0])
    opt.step()  # d = 0.1 * g: the next step's resilience is active
    w.grad = torch.tensor([float("inf"), 1.0, 1.0])
    opt.step()
    assert not torch.isfinite(w.detach()[0]) and torch.isfinite(w.detach()[1:]).all()


def test_fused_flag_conflict_is_clear():
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        AdaRem([torch.nn.Parameter(torch.ones(1))], fused=True, foreach=True)
