"""What AdaRem refuses (bad parameter groups, sparse gradients, a missing CPU kernel), and that a
refusal changes nothing: a group that raised is not kept, a step that raised updated no group."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

import adarem.optim.adarem as adarem_module
from adarem import AdaRem

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def _skip_without_kernel(flags: dict) -> None:
    if flags.get("fused") and not HAS_COMPILER:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")


def _assert_same_state(a: dict, b: dict) -> None:
    """Two state_dicts hold the same groups and the same state, bit for bit."""
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for name, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][name]), (k, name)


@pytest.mark.parametrize("bad, error, match", [
    (dict(lr=-1.0), ValueError, "Invalid lr: -1.0"),
    (dict(beta=1.0), ValueError, "Invalid beta: 1.0"),
    (dict(maximize="no"), ValueError, "Invalid maximize: 'no'"),
    (dict(decoupled_weight_decay=None), ValueError, "Invalid decoupled_weight_decay: None"),
    (dict(foreach="yes"), ValueError, "Invalid foreach: 'yes'"),
    (dict(fused=True, foreach=True), ValueError, "cannot both be set"),
    (dict(complex=True), ValueError, "complex parameters"),
    (dict(fused=True, kernel_missing=True), RuntimeError, "needs its C\\+\\+ kernel"),
])
def test_a_refused_param_group_is_not_kept(bad, error, match, monkeypatch):
    """add_param_group raises for a group the constructor would refuse, and the optimizer steps on
    as if it had never been offered: the refused tensor is not updated."""
    bad = dict(bad)
    if bad.pop("kernel_missing", False):
        monkeypatch.setattr(adarem_module, "cpu_kernel_error", lambda: "RuntimeError: no compiler")
    dtype = torch.complex64 if bad.pop("complex", False) else torch.float32
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2, dtype=dtype))
    opt = AdaRem([a], lr=0.5)
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [b], **bad})
    assert len(opt.param_groups) == 1
    a.grad, b.grad = torch.ones(2), torch.ones(2, dtype=dtype)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2, dtype=dtype)) and b not in opt.state
    assert torch.equal(a.detach(), torch.full((2,), 0.5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(maximize="no"), "Invalid maximize: 'no'"),
    (dict(maximize=1), "Invalid maximize: 1"),
    (dict(decoupled_weight_decay=None), "Invalid decoupled_weight_decay: None"),
    (dict(fused="false"), "Invalid fused: 'false'"),
])
def test_flags_must_be_bools(kwargs, match):
    """A truthy string would silently switch a flag on; None is accepted only where torch's
    optimizers accept it (foreach and fused: pick the default path)."""
    with pytest.raises(ValueError, match=match):
        AdaRem([torch.nn.Parameter(torch.ones(2))], **kwargs)
    opt = AdaRem([torch.nn.Parameter(torch.ones(2))], foreach=None, fused=None)
    assert opt.param_groups[0]["foreach"] is None and opt.param_groups[0]["fused"] is None


def test_a_complex_parameter_is_refused_by_the_constructor_and_by_add_param_group():
    c = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex parameters"):
        AdaRem([c])
    opt = AdaRem([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="complex parameters"):
        opt.add_param_group({"params": [c]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("path", PATHS)
def test_a_sparse_gradient_in_a_later_group_changes_nothing(path):
    """The step checks every group before it updates any: the earlier group's weights, step
    counts and trackers are as they were, and a tensor stepped for the first time gets no state."""
    flags = PATHS[path]
    _skip_without_kernel(flags)
    torch.manual_seed(0)
    a, fresh = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = AdaRem([{"params": [a, fresh]}, {"params": list(emb.parameters())}], **flags)
    a.grad = torch.ones(3)
    opt.step()  # a has state now, fresh has none
    before = copy.deepcopy(opt.state_dict())
    weights = [a.detach().clone(), fresh.detach().clone()]
    a.grad, fresh.grad = torch.ones(3), torch.ones(2)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(a.detach(), weights[0]) and torch.equal(fresh.detach(), weights[1])
    assert fresh not in opt.state
    _assert_same_state(opt.state_dict(), before)
    # with the sparse gradient gone the step proceeds, as if the failed one had never been tried
    emb.weight.grad = None
    opt.step()
    assert int(opt.state[a]["step"]) == 2 and int(opt.state[fresh]["step"]) == 1


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the fused CPU kernel cannot be built here")
def test_a_fused_group_whose_kernel_is_gone_changes_nothing(monkeypatch):
    """A group made fused by a loaded state_dict needs the kernel only at the step: where it cannot
    load, the step raises before the foreach group before it is updated."""
    a, w = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4))
    opt = AdaRem([{"params": [a], "foreach": True}, {"params": [w], "fused": True}])
    a.grad, w.grad = torch.ones(3), torch.ones(4)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    weights = [a.detach().clone(), w.detach().clone()]
    monkeypatch.setattr(adarem_module, "cpu_kernel_error", lambda: "RuntimeError: no compiler")
    with pytest.raises(RuntimeError, match="needs its C\\+\\+ kernel"):
        opt.step()
    assert torch.equal(a.detach(), weights[0]) and torch.equal(w.detach(), weights[1])
    _assert_same_state(opt.state_dict(), before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr="0.1"), "Invalid lr: '0.1'"),
    (dict(lr=None), "Invalid lr: None"),
    (dict(lr=True), "Invalid lr: True"),
    (dict(beta=(0.9, 0.999)), r"Invalid beta: \(0.9, 0.999\)"),  # Adam-style betas
    (dict(decay=None), "Invalid decay: None"),
    (dict(eps=[1e-8]), r"Invalid eps: \[1e-08\]"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Invalid lr: tensor"),
    (dict(lr=torch.tensor(True)), "Invalid lr: tensor"),
    # a tensor decay/beta would be computed in the tensor's dtype: fp16 decay gave NaN weights
    (dict(decay=torch.tensor(0.99, dtype=torch.float16)), "only lr may be a tensor"),
    (dict(beta=torch.tensor(0.9)), "only lr may be a tensor"),
])
def test_a_hyperparameter_that_is_no_number_is_refused_naming_it(kwargs, match):
    """One ValueError line naming the value (was: TypeError "'>' not supported between instances
    of 'str' and 'float'", or, for an fp16 tensor decay, NaN weights at the first step)."""
    with pytest.raises(ValueError, match=match):
        AdaRem([torch.nn.Parameter(torch.ones(2))], **kwargs)
    opt = AdaRem([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **kwargs})
    assert len(opt.param_groups) == 1


def test_numbers_of_every_real_kind_and_a_tensor_lr_are_accepted():
    import numpy as np

    p = torch.nn.Parameter(torch.ones(2))
    opt = AdaRem([p], lr=torch.tensor(0.5), beta=np.float32(0.5), decay=1, momentum=0, eps=0,
                 weight_decay=np.float64(0.0))
    p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(p.detach(), torch.full((2,), 0.5))


@pytest.fixture()
def one_gloo_rank():
    """A one-rank gloo process group in this process (FSDP and DTensors need one), destroyed after."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_dtensor_parameter_is_refused_in_one_line(one_gloo_rank):
    """FSDP2 / tensor-parallel parameters (DTensors) failed midway through the first step on every
    path (after the loop path had updated the weight and its tracker; 'got mixed torch.Tensor and
    DTensor', or a bare AssertionError), and a sharded tensor's s must be the max over all ranks,
    which no path gathers: refused when the group is added."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
    with pytest.raises(ValueError, match=r"does not support DTensor .* parameters \(shape \(4, 3\)\).*DDP"):
        AdaRem([p])
    opt = AdaRem([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="does not support DTensor"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("path", PATHS)
def test_an_integer_parameter_with_a_gradient_changes_nothing(path):
    """An integer tensor (e.g. a counter kept as a Parameter with requires_grad=False) is stepped
    only if someone gives it a .grad; that raised a cast error midway ('result type Float can't be
    cast to the desired output type Long'), after the float tensors of the group had been updated."""
    flags = PATHS[path]
    _skip_without_kernel(flags)
    a = torch.nn.Parameter(torch.ones(3))
    n = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    opt = AdaRem([a, n], **flags)
    a.grad, n.grad = torch.ones(3), torch.ones(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"floating-point parameters only; a torch.int64 parameter of shape \(2,\)"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and len(opt.state) == 0
    n.grad = None
    opt.step()
    assert int(opt.state[a]["step"]) == 1


def test_an_fsdp_flat_parameter_is_refused_in_one_line():
    """FSDP (use_orig_params=False) hands the optimizer flat parameters: a rank's shard of several
    tensors concatenated, so s would be the max over that shard, neither per tensor nor global."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    from torch.distributed.fsdp._flat_param import FlatParameter

    flat = FlatParameter(torch.zeros(6), requires_grad=True)
    with pytest.raises(ValueError, match=r"does not support FSDP flat parameters \(shape \(6,\)\).*DDP"):
        AdaRem([flat])


def test_fsdp_use_orig_params_is_refused_in_one_line(one_gloo_rank):
    """FSDP with use_orig_params=True hands the optimizer 1-D views of this rank's shard of each
    parameter: accepted, s was taken over the shard only (weights 0.18 off an unsharded run after 3
    steps with 2 ranks, where SGD matched exactly). A real FSDP wrap, one gloo rank."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(torch.nn.Linear(4, 3), use_orig_params=True, device_id=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"does not support FSDP \(use_orig_params=True\) parameters .*DDP"):
        AdaRem(model.parameters())


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)])
def test_a_parameter_listed_twice_in_a_group_is_refused(path):
    """torch only warns about a duplicate parameter; the fused CPU kernel then updated both copies
    at once from the state before the step (weights of -998,000 from ones, differing run to run),
    the other paths stepped it twice (helper-88)."""
    p = torch.nn.Parameter(torch.ones(1000))
    with pytest.raises(ValueError, match=r"^AdaRem: a parameter group lists the same parameter twice; pass each "
                                         r"parameter once"):
        AdaRem([p, p], lr=0.1, **path)
    opt = AdaRem([torch.nn.Parameter(torch.ones(3))], lr=0.1, **path)
    with pytest.raises(ValueError, match="the same parameter twice"):
        opt.add_param_group({"params": [p, p]})
    assert len(opt.param_groups) == 1  # the refused group is not kept


def test_a_one_element_tensor_lr_is_kept_as_a_zero_dim_view():
    """lr=torch.tensor([0.05]) passed the check and broke torch.compile'd steps (a 0-dim tensor is
    expected); it is kept as a 0-dim view of the caller's tensor, so a scheduler filling either
    still sets the lr."""
    lr = torch.tensor([0.05])
    opt = AdaRem([torch.nn.Parameter(torch.ones(3))], lr=lr)
    assert opt.param_groups[0]["lr"].dim() == 0
    lr.fill_(0.01)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.01)
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = torch.tensor([[0.2]])  # a state saved with another shape
    opt.load_state_dict(state)
    assert opt.param_groups[0]["lr"].dim() == 0 and float(opt.param_groups[0]["lr"]) == pytest.approx(0.2)
