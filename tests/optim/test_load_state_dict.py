"""AdaRem.load_state_dict: a state in another format resumes as the saved one would, and a state
that cannot be this optimizer's is refused in one line before anything is replaced."""

from __future__ import annotations

import copy
import os
import re
import shutil

import pytest
import torch

from adarem import AdaRem

PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def _run(flags: dict, steps: int, params=None, opt=None):
    gen = torch.Generator().manual_seed(0)
    if params is None:
        params = [torch.nn.Parameter(torch.randn(4, 3, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
        opt = AdaRem(params, lr=0.1, momentum=0.5, decay=0.9, **flags)
    for i in range(steps):
        for p in params:
            p.grad = torch.sin(p.detach() * 3 + i)
        opt.step()
    return params, opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("step", [lambda t: t, lambda t: float(t), lambda t: torch.tensor(t)],
                         ids=["int", "float", "int64 tensor"])
def test_a_step_count_given_as_a_number_or_integer_tensor_resumes(path, step):
    """As torch's Adam does, a state whose `step` is a number (a hand-made or converted state) or an
    integer tensor is taken (was: TypeError 'expected Tensor as element 0' or a cast error at the
    next step) and continues the trajectory as the saved float32 count does."""
    if PATHS[path].get("fused") and shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")
    straight, _ = _run(PATHS[path], 6)
    params, opt = _run(PATHS[path], 3)
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        st["step"] = step(int(st["step"]))
    resumed = AdaRem(params, **PATHS[path])
    resumed.load_state_dict(saved)
    for i in range(3, 6):  # the gradients _run gives at steps 3-5
        for p in params:
            p.grad = torch.sin(p.detach() * 3 + i)
        resumed.step()
    for a, b in zip(params, straight):
        assert torch.equal(a, b)
    assert all(st["step"].dtype == torch.float32 and int(st["step"]) == 6 for st in resumed.state.values())


@pytest.mark.parametrize("key, shape", [("exp_avg", (3, 4)), ("exp_avg", (1,)), ("momentum_buffer", (12,))])
def test_a_state_of_another_shape_is_refused_before_anything_changes(key, shape):
    """Torch compares only how many tensors each group has: a state saved for another model loaded
    and then failed at the next step ("output with shape ... doesn't match the broadcast shape"),
    after updating the tensors stepped before it."""
    params, opt = _run(PATHS["foreach"], 2)
    before = copy.deepcopy(opt.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0][key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=re.escape(f"parameter 0 (shape (4, 3)) has {key} of shape {shape}")):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, st in before["state"].items():
        for name, v in st.items():
            assert torch.equal(after["state"][k][name], v)
    _run(PATHS["foreach"], 1, params, opt)  # still steps


def test_a_tensor_state_that_is_not_adarem_s_is_refused():
    """A per-tensor state without step and exp_avg (SGD's momentum_buffer alone, under AdaRem's
    groups) failed at the next step with KeyError: 'exp_avg'."""
    p = torch.nn.Parameter(torch.randn(3))
    opt = AdaRem([p], momentum=0.9)
    saved = opt.state_dict()
    saved["state"] = {0: {"momentum_buffer": torch.zeros(3)}}
    with pytest.raises(ValueError, match=r"has no step or exp_avg .*not an AdaRem state"):
        opt.load_state_dict(saved)
    assert len(opt.state) == 0


def test_another_optimizers_groups_are_refused_even_before_any_step():
    """SGD's state_dict saved before its first step has no per-tensor state, but its groups lack
    AdaRem's beta, decay and eps: it loaded, and the next step raised KeyError: 'beta'."""
    p = torch.nn.Parameter(torch.randn(3))
    saved = torch.optim.SGD([p], lr=0.1, momentum=0.9).state_dict()
    opt = AdaRem([p])
    with pytest.raises(ValueError, match=r"param group 0 has no beta, decay, eps .*not an AdaRem state"):
        opt.load_state_dict(saved)
    p.grad = torch.ones(3)
    opt.step()  # the groups are AdaRem's still
    assert opt.param_groups[0]["decay"] == 0.999


def test_a_group_saved_with_lr_zero_loads():
    """A schedule may end at lr 0 (cosine to eta_min 0): its state_dict loads, although the
    constructor refuses lr 0."""
    p = torch.nn.Parameter(torch.randn(3))
    opt = AdaRem([p])
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["lr"] = 0.0
    saved = opt.state_dict()
    AdaRem([p]).load_state_dict(saved)


@pytest.mark.parametrize("path", PATHS)
def test_the_cached_max_is_taken_from_the_loaded_tracker(path):
    """max|d| is derived state (ALGORITHM.md): a state_dict whose trackers were changed without it
    (averaged over checkpoints, edited) stepped with the file's stale max, so b left [-1, 1]: here
    d tripled gave r = 1 + 3*lambda^t for the largest weight, beyond the rule's bound of 2."""
    if PATHS[path].get("fused") and shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = AdaRem([p], lr=0.5, decay=1.0, eps=0.0, **PATHS[path])
    p.grad = torch.tensor([0.2, -0.4, 0.1])
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["exp_avg"] *= 3
    opt = AdaRem([p], **PATHS[path])
    opt.load_state_dict(saved)
    before, d = p.detach().clone(), saved["state"][0]["exp_avg"]
    p.grad = torch.tensor([0.2, -0.4, 0.1])
    opt.step()
    r = 1 + torch.sign(p.grad) * d / d.abs().max()  # decay 1, eps 0
    torch.testing.assert_close(p.detach(), before - 0.5 * r * p.grad)
    assert float(r.max()) == pytest.approx(2.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_parameter_whose_dtype_changed_under_its_state_is_refused_then_recast(path, dtype):
    """model.to(dtype) after a step: the foreach and fused paths failed midway ('expected dtype float
    for `end`'), after updating the weight; the loop path went on with fp32 state (an fp64 weight
    then followed the rule only to fp32 rounding). The step now refuses before anything changes,
    naming the remedy, and the remedy works."""
    if PATHS[path].get("fused") and shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = AdaRem(model.parameters(), momentum=0.5, **PATHS[path])
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    model.to(dtype)
    opt.zero_grad()
    model(torch.randn(2, 4, dtype=dtype)).sum().backward()
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=rf"a {dtype} parameter of shape \(3, 4\) has torch.float32 state.*"
                                           r"opt.load_state_dict\(opt.state_dict\(\)\)"):
        opt.step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(int(st["step"]) == 1 for st in opt.state.values())
    opt.load_state_dict(opt.state_dict())
    opt.step()
    for p in model.parameters():
        st = opt.state[p]
        assert int(st["step"]) == 2
        assert {st[k].dtype for k in ("exp_avg", "momentum_buffer", "max_abs_exp_avg")} == {dtype}
