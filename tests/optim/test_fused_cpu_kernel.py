"""The fused path's C++ kernel on the CPU (adarem/optim/adarem_fused_cpu.cpp): layouts it takes,
layouts it hands to the for-loop path, and what happens where it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import adarem.optim.adarem as adarem_module
from adarem import AdaRem
from adarem.config import OptimizerConfig
from adarem.optim.factory import build_optimizer, optimizer_impl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the fused CPU kernel cannot be built")


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_the_kernel_builds_where_a_compiler_is_present():
    """Tests elsewhere expect the foreach path where the kernel cannot be built; where a compiler
    is present it must build, or those expectations would hide a broken kernel."""
    assert adarem_module.cpu_kernel_error() is None


def _trajectory(make_grad, flags, steps=30, **options):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    v = torch.randn(7, generator=gen).requires_grad_()
    opt = AdaRem([w, v], lr=0.05, weight_decay=0.01, **options, **flags)
    for step in range(steps):
        w.grad = make_grad(w.detach() * (1 + step % 3) - 0.5)
        v.grad = 0.7 * v.detach() - 0.3 * float(step % 4)  # smooth: rounding is not amplified
        opt.step()
    return w.detach(), v.detach(), opt


@needs_kernel
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


@needs_kernel
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


@needs_kernel
def test_the_record_names_the_foreach_path_the_kernel_hands_low_precision_tensors_to():
    """run.json's optimizer_impl said "fused" for a bf16 model, every tensor of which the CPU
    kernel hands to the foreach path (it steps dense, non-empty fp32/fp64 tensors); it now names
    the path each tensor takes, read off the kernel's own choice in a real step."""
    def impl(model):
        return optimizer_impl(build_optimizer(OptimizerConfig(name="adarem", lr=0.1, impl="fused"), model))

    assert impl(torch.nn.Linear(3, 2)) == "fused"
    assert impl(torch.nn.Linear(3, 2).to(torch.bfloat16)) == "foreach"  # helper-97: was foreach+fused
    mixed = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).to(torch.bfloat16))
    assert impl(mixed) == "foreach+fused"
    nhwc = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    assert impl(nhwc) == "fused"  # dense in another order of dimensions: the kernel takes it
    # torch's own fused CPU optimizers step bf16 themselves
    bf16 = torch.nn.Linear(3, 2).to(torch.bfloat16)
    assert optimizer_impl(build_optimizer(OptimizerConfig(name="adamw", lr=0.1, impl="fused"), bf16)) == "fused"
    # the label agrees with the kernel's own choice: what it rejects in a real step is what the
    # label counts as foreach (a strided view, an empty tensor, a bf16 one)
    params = [torch.nn.Parameter(torch.randn(4, 8)[:, ::2]), torch.nn.Parameter(torch.empty(0, 3)),
              torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16)), torch.nn.Parameter(torch.randn(6)),
              torch.nn.Parameter(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))]
    for p in params:
        p.grad = torch.randn_like(p)
    AdaRem(params, fused=True)  # builds and loads the kernel
    rejected = torch.ops.adarem.fused_step_cpu_(  # state as AdaRem makes it: d like p, max|d| a 0-dim tensor
        [p.detach() for p in params], [p.grad for p in params], [torch.zeros_like(p) for p in params],
        [torch.zeros((), dtype=p.dtype) for p in params], [None] * len(params),
        torch.zeros(len(params), len(adarem_module._HP), dtype=torch.float64)).tolist()
    from adarem.optim.factory import _kernel_takes
    assert [i for i, p in enumerate(params) if not _kernel_takes(p)] == rejected == [0, 1, 2]


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
    assert "WARNING" not in out.stderr, out.stderr[-2000:]  # no compiler banner around the one line


@needs_kernel
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
    # the next process asks from two threads at once (the library must be registered once)
    threaded = ("import threading\nfrom adarem.optim.adarem import cpu_kernel_error\nout = []\n"
                "ts = [threading.Thread(target=lambda: out.append(cpu_kernel_error())) for _ in range(2)]\n"
                "[t.start() for t in ts]; [t.join() for t in ts]\nprint('ERROR', *out)")
    second = subprocess.run([sys.executable, "-c", threaded], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0 and "ERROR None None" in second.stdout, second.stdout + second.stderr[-2000:]
    assert len(list(root.glob("*.so"))) == 1 and not list(root.glob(".*.so"))
    assert not list(root.glob("build-*"))  # the killed build's directory was cleared by the next builder
    # a damaged library (a node crashed while installing): rebuilt, never mapped (SIGBUS)
    (lib,) = root.glob("*.so")
    with open(lib, "r+b") as fh:
        fh.truncate(5000)
    third = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0 and "ERROR None" in third.stdout, third.stdout + third.stderr[-2000:]
    assert lib.stat().st_size > 5000


@needs_kernel
def test_the_step_bumps_version_counters_like_in_place_ops():
    """Autograd must still refuse a backward through a weight the step changed (the GAN pattern:
    step one network, then backward through it): the kernel writes through data pointers."""
    paths = {}
    for name, flags in (("loop", dict(foreach=False)), ("fused", dict(fused=True))):
        w = torch.nn.Parameter(torch.ones(3))
        opt = AdaRem([w], momentum=0.5, **flags)
        x = torch.ones(3, requires_grad=True)
        y = (w * x).sum()
        w.grad = torch.ones(3)
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()
        st = opt.state[w]
        paths[name] = [t._version > 0 for t in (st["exp_avg"], st["max_abs_exp_avg"], st["momentum_buffer"])]
    assert paths["fused"] == [True, True, True]


@needs_kernel
def test_the_op_schema_declares_every_tensor_it_writes():
    from torch.library import opcheck

    assert adarem_module.cpu_kernel_error() is None
    p, g, d, u = (torch.randn(5) for _ in range(4))
    s = d.abs().max()
    hp = torch.tensor([[0.1, 0.9, 0.9, 0.1, 1e-8, 0.0, 1.0, 1.0, 0.5]], dtype=torch.float64)
    opcheck(torch.ops.adarem.fused_step_cpu_.default, ([p], [g], [d], [s], [u], hp),
            test_utils=("test_schema",))


@needs_kernel
def test_a_fused_state_dict_resumes_in_a_process_that_never_built_the_kernel(tmp_path):
    """Optimizer.load_state_dict restores the saved groups' fused flag; the step then needs the
    kernel, although this process never constructed a fused optimizer."""
    w = torch.nn.Parameter(torch.arange(4.0))
    opt = AdaRem([w], fused=True)
    w.grad = torch.ones(4)
    opt.step()
    torch.save({"w": w.detach(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    code = ("import torch\nfrom adarem import AdaRem\n"
            f"ck = torch.load({str(tmp_path / 'ckpt.pt')!r})\n"
            "w = torch.nn.Parameter(ck['w'].clone())\nopt = AdaRem([w], foreach=True)\n"
            "opt.load_state_dict(ck['opt'])\nw.grad = torch.ones(4)\nopt.step()\n"
            "print('OK', opt.param_groups[0]['fused'], w.detach().tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK True" in out.stdout, out.stderr[-2000:]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_steps_with_the_foreach_path(dtype):
    """The kernel takes fp32/fp64 only; fp16/bf16 tensors of a fused group step with the foreach
    path (faster there on the CPU), bit for bit as a foreach optimizer does."""
    results = []
    for flags in (dict(foreach=True), dict(fused=True)):
        w = torch.nn.Parameter(torch.linspace(-1, 1, 40000).to(dtype))
        opt = AdaRem([w], lr=0.01, momentum=0.9, weight_decay=0.01, **flags)
        for step in range(5):
            w.grad = (w.detach().float() * 0.3 + 0.1 * step).to(dtype)
            opt.step()
        results.append((w.detach().clone(), opt.state[w]["exp_avg"].clone(), float(opt.state[w]["max_abs_exp_avg"])))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


# every fast path: the CPU kernel, the foreach path tensor-major (the CPU's) and multi-tensor (other
# devices', and torch.compile's), and the compiled fused kernel (CUDA's) through Inductor's C++
FAST_PATHS = {"fused": (dict(fused=True), {}), "foreach": (dict(foreach=True), {}),
              "foreach_mt": (dict(foreach=True), dict(FOREACH_TENSOR_MAJOR=False)),
              "fused_compiled": (dict(fused=True), dict(FUSED_CPU_KERNEL=False))}


@needs_kernel
@pytest.mark.parametrize("eps", [0.0, 1e-50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_tiny_eps_with_a_zero_or_subnormal_max_stays_finite(path, dtype, eps, monkeypatch):
    """eps = 0 or below the type's normal range (allowed) with max|d| zero (the first step) or
    subnormal: lambda^t / (s + eps) overflows, but b = d / (s + eps) is within [-1, 1] (or 0 where
    s + eps is 0); the fast paths must give the for-loop path's finite result."""
    flags, switches = FAST_PATHS[path]
    for name, value in switches.items():  # the for-loop path reads neither switch
        monkeypatch.setattr(adarem_module, name, value)
    tiny = torch.finfo(dtype).tiny  # d = 0.1 * g below it: subnormal
    out = []
    for f in (dict(foreach=False), flags):
        w = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        opt = AdaRem([w], lr=0.1, eps=eps, **f)
        w.grad = torch.tensor([0.85, -0.85, 0.4], dtype=dtype) * tiny
        opt.step()
        w.grad = torch.tensor([1.0, 1.0, -1.0], dtype=dtype)
        opt.step()
        out.append(w.detach().clone())
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0])


@needs_kernel
@pytest.mark.parametrize("path", FAST_PATHS)
def test_eps_zero_with_tiny_gradients_stays_finite(path, monkeypatch):
    """eps = 0 and gradients of 1e-41 (subnormal) for three steps, as reported: every
    weight stays finite and follows the for-loop path."""
    flags, switches = FAST_PATHS[path]
    for name, value in switches.items():  # the for-loop path reads neither switch
        monkeypatch.setattr(adarem_module, name, value)
    out = []
    for f in (dict(foreach=False), flags):
        gen = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, generator=gen))
        opt = AdaRem([p], lr=0.1, eps=0.0, **f)
        for _ in range(3):
            p.grad = torch.randn(64, generator=gen) * 1e-41
            opt.step()
        out.append(p.detach().clone())
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0])


@needs_kernel
@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True), dict(foreach=False)],
                         ids=["fused", "foreach", "loop"])
def test_beta_zero_tracks_the_gradient_exactly(flags):
    """beta = 0 (allowed): d is the last gradient, exactly (no d + (1 - beta)(g - d) cancellation)."""
    w = torch.nn.Parameter(torch.zeros(2))
    opt = AdaRem([w], lr=1e-12, beta=0.0, **flags)
    for g in ([1e8, -1e8], [1.0, -1.0]):
        w.grad = torch.tensor(g)
        opt.step()
    assert opt.state[w]["exp_avg"].tolist() == [1.0, -1.0]


@needs_kernel
@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True), dict(foreach=False)],
                         ids=["fused", "foreach", "loop"])
def test_a_nan_in_the_tracker_makes_the_step_nan_as_the_rule_does(flags):
    """s = max|d| is NaN when d holds a NaN, so b, r and the whole tensor's step are NaN (the
    contract, and the oracle); no path may quietly switch the resilience off instead."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = AdaRem([w], **flags)
    w.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    opt.step()  # d gets a NaN, and so does w[1]
    w.grad = torch.ones(4)
    opt.step()
    assert torch.isnan(w.detach()).all()


@needs_kernel
def test_the_result_does_not_depend_on_the_thread_count():
    """The kernel splits the step into blocks across torch's threads (OpenMP): every block is
    independent and max|d| is an exact max, so 1 and 2 threads give the same bits."""
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            gen = torch.Generator().manual_seed(0)
            ws = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((70001,), (3, 40000), (5,))]
            opt = AdaRem(ws, momentum=0.5, weight_decay=0.01, fused=True)
            for step in range(4):
                for w in ws:
                    w.grad = torch.sin(w.detach() * (step + 1))
                opt.step()
            out.append([w.detach().clone() for w in ws] + [opt.state[w]["max_abs_exp_avg"].clone() for w in ws])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*out))
