"""The fused path's C++ kernel on the CPU (adarem/optim/adarem_fused_cpu.cpp): layouts it takes,
layouts it hands to the for-loop path, and what happens where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import adarem.optim.adarem as adarem_module
from adarem import AdaRem
from adarem.config import OptimizerConfig
from adarem.optim.factory import build_optimizer, optimizer_impl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trajectory(make_grad, flags, steps=30, **options):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    v = torch.randn(7, generator=gen).requires_grad_()
    opt = AdaRem([w, v], lr=0.05, weight_decay=0.01, **options, **flags)
    for step in range(steps):
        w.grad = make_grad(w.detach() * (1 + step % 3) - 0.5)
        v.grad = torch.cos(v.detach() * (step + 1))
        opt.step()
    return w.detach(), v.detach(), opt


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("grad_layout", ["same", "other"])
def test_channels_last_and_mixed_layouts_follow_the_loop_path(grad_layout, momentum):
    """A channels_last weight with a channels_last gradient runs in the kernel over its storage;
    a gradient of another layout is handed to the for-loop path. Both match the for-loop path."""
    if grad_layout == "same":
        make = lambda g: g.contiguous(memory_format=torch.channels_last)  # noqa: E731
    else:
        make = lambda g: g.contiguous()  # noqa: E731
    w_ref, v_ref, _ = _trajectory(make, dict(foreach=False), momentum=momentum)
    w, v, opt = _trajectory(make, dict(fused=True), momentum=momentum)
    torch.testing.assert_close(w, w_ref, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(v, v_ref, rtol=2e-5, atol=2e-6)
    assert w.is_contiguous(memory_format=torch.channels_last)
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert float(st["max_abs_exp_avg"]) == float(st["exp_avg"].abs().max())


def test_max_of_d_propagates_nan_like_torch():
    """The kernel reduces max|d| on the bit patterns; a NaN in d must come out as NaN, as amax."""
    p = torch.nn.Parameter(torch.zeros(40000))
    opt = AdaRem([p], fused=True)
    p.grad = torch.ones(40000)
    p.grad[33333] = float("nan")
    opt.step()
    assert torch.isnan(opt.state[p]["max_abs_exp_avg"])
    # p now holds a NaN: with weight decay off it must not reach d (no "+ 0 * p")
    assert torch.isnan(p.detach()[33333])
    p.grad = torch.full((40000,), -3.0)
    opt2 = AdaRem([p], fused=True)
    opt2.step()
    assert float(opt2.state[p]["max_abs_exp_avg"]) == pytest.approx(0.3)
    assert torch.isfinite(opt2.state[p]["exp_avg"]).all()


def test_without_the_kernel_fused_refuses_and_auto_takes_foreach(monkeypatch):
    monkeypatch.setattr(adarem_module, "cpu_kernel_error", lambda: "RuntimeError: no compiler")
    with pytest.raises(RuntimeError, match=r"fused=True\) on the CPU needs its C\+\+ kernel.*no compiler.*foreach=True"):
        AdaRem([torch.nn.Parameter(torch.ones(2))], fused=True)
    model = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="fused CPU kernel is unavailable"):
        opt = build_optimizer(OptimizerConfig(name="adarem", lr=0.1), model)
    assert optimizer_impl(opt) == "foreach"


def test_a_failed_build_is_one_line_and_nothing_is_cached(tmp_path):
    """A real build with no working compiler, in a fresh extension cache: AdaRem(fused=True)
    raises the one-line error; the kernel is not half-registered for a later attempt."""
    code = ("import torch\nfrom adarem import AdaRem\n"
            "try:\n    AdaRem([torch.nn.Parameter(torch.ones(2))], fused=True)\n"
            "except RuntimeError as e:\n    print('ERR', e)\n"
            "print('OPS', hasattr(torch.ops.adarem, 'fused_step_cpu_'))\n")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": "/bin/false"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")]
    assert len(lines) == 1 and "needs its C++ kernel" in lines[0] and "pip install ninja" in lines[0], out.stdout
    assert "OPS False" in out.stdout


def test_a_build_killed_midway_does_not_block_the_next_process(tmp_path):
    """SIGKILL (a preempted job) while the kernel compiles: the next process builds and loads it
    instead of waiting forever on a lock file, and no half-written library is ever installed."""
    import signal
    import time

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    code = "from adarem.optim.adarem import cpu_kernel_error; print('ERROR', cpu_kernel_error())"
    first = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "ext" / "adarem"
    deadline = time.monotonic() + 120
    while not list(root.glob("build-*")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first process finished before it could be killed mid-build"
    time.sleep(1.0)  # the compiler is running now
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert not list(root.glob("*.so"))  # nothing installed by the killed build
    second = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0 and "ERROR None" in second.stdout, second.stdout + second.stderr[-2000:]
    assert len(list(root.glob("*.so"))) == 1 and not list(root.glob(".*.so"))
