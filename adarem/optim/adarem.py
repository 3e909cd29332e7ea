r"""AdaRem: Adaptive Gradient Method with Resilience and Momentum (arXiv 2010.11041).

This file follows ``../shared/ALGORITHM.md`` (the project's contract) exactly.

.. math::
   \begin{aligned}
     &\textbf{input}: \eta \text{ (lr)}, \beta, \lambda \text{ (decay)}, \mu \text{ (momentum)},
        \epsilon, w \text{ (weight decay)}, \textit{decoupled}, \textit{maximize} \\
     &\textbf{init}: d_0 \leftarrow 0, \; u_0 \leftarrow 0, \; s_0 \leftarrow 0 \\
     &\textbf{for } t = 1, 2, \dots: \\
     &\quad g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) \quad (- \text{ if maximize}) \\
     &\quad \textbf{if } w > 0 \textbf{ and not } \textit{decoupled}: g_t \leftarrow g_t + w\,\theta_{t-1} \\
     &\quad s \leftarrow \max_i |d_{t-1,i}| \\
     &\quad b_t \leftarrow \operatorname{sign}(g_t) \odot d_{t-1} / (s + \epsilon)
            \qquad \in [-1, 1] \\
     &\quad r_t \leftarrow 1 + \lambda^t b_t \qquad \in [1-\lambda^t, 1+\lambda^t] \\
     &\quad \delta_t \leftarrow r_t \odot g_t \\
     &\quad \textbf{if } \mu > 0: u_t \leftarrow \mu u_{t-1} + \delta_t, \; \delta_t \leftarrow u_t \\
     &\quad \textbf{if } w > 0 \textbf{ and } \textit{decoupled}:
            \theta_{t-1} \leftarrow \theta_{t-1} - \eta w \theta_{t-1} \\
     &\quad \theta_t \leftarrow \theta_{t-1} - \eta \delta_t \\
     &\quad d_t \leftarrow \beta d_{t-1} + (1-\beta) g_t \\
   \end{aligned}

A weight whose gradient keeps the sign of its recent history (d) gets up to twice the base step;
a weight that oscillates gets a smaller one, down to zero. As :math:`\lambda^t \to 0` the method
becomes plain SGD (with heavy-ball momentum when :math:`\mu > 0`).

Implementation notes (all paths compute the same rule):

* ``u`` starts at zero, so ``u <- mu*u + delta`` at the first step equals ``u <- delta`` exactly.
* ``s = max|d|`` is cached per tensor in the state (``max_abs_exp_avg``), computed right after
  ``d`` is updated, so the fused path needs no extra reduction pass at the start of the next step.
  It is derived state: it is recomputed from ``exp_avg`` whenever it is missing and on
  ``load_state_dict``. Code that edits ``state[p]["exp_avg"]`` in place between steps must delete
  ``max_abs_exp_avg`` too (every path would otherwise use the max of the tracker before the edit).
* When ``s + eps == 0`` (possible only with ``eps = 0`` and ``d`` all zeros) every ``b`` is 0,
  which is what the rule gives in the limit; no ``0/0`` is evaluated. With ``eps`` below the
  smallest normal number (``eps = 0``, say) ``s + eps`` can be subnormal, where
  ``lambda^t / (s + eps)`` overflows; every path then still computes ``b = d / (s + eps)`` in
  range (the fast paths scale ``d`` and ``s + eps`` by ``2^64``, or divide per element), so the
  step stays finite, as the rule's is.
* The fast paths use the per-tensor scalar ``c = lambda^t / (s + eps)``. The compiled fused path
  computes ``delta = (1 + c * sign(g) * d) * g``; the foreach path and the fused CPU kernel compute
  ``delta = g + c * d * |g|``
  (``sign(g) * g = |g|`` exactly), so it forms no ``r`` tensor. Both are the contract's rule up
  to rounding. ``g`` here already includes ``-`` for maximize and coupled weight decay.
* No path writes to the caller's ``.grad`` (as torch's SGD/Adam with maximize=False): where ``g``
  differs from ``.grad`` (maximize, coupled weight decay) it is formed in a temporary.
* Paths. for-loop (``foreach=False``): the readable one, line by line as the contract.
  foreach (the default): on the CPU, where torch's ``_foreach_*`` ops are only a C++ loop over
  per-tensor kernels, the whole update runs one tensor at a time while its data is in cache, into
  two flat scratch buffers that the optimizer keeps across steps (``_scratch``, sized by the
  largest tensor, never in the state_dict; fresh parameter-sized temporaries cost page faults that
  outweigh the arithmetic); ``s`` and ``c`` are host fp64 floats there. On other devices it runs
  multi-tensor ``_foreach_*`` ops over the group with ``c`` as 0-dim device tensors and ``max|d|``
  from one ``_foreach_norm(d, inf)``: no host sync. fused (``fused=True``): one loop per tensor
  (read p, g, d, u, write p, d, u and ``max|d|``), hyperparameters in a per-tensor table so that
  schedules and any number of groups never recompile. On the CPU a C++ kernel
  (``adarem_fused_cpu.cpp``) runs every tensor of the step in one parallel loop; elsewhere
  ``torch.compile`` of a per-tensor function, called on chunks of ``_FUSED_CHUNK`` tensors (see
  there why not all at once).
* Stability: the per-weight step reaches up to ``(1 + lambda^t) * lr``, so on a quadratic with
  largest curvature L, plain SGD is stable for ``lr * L < 2`` but early AdaRem steps only for
  ``lr * L < 2 / (1 + lambda^t)`` (about ``lr * L < 1`` at the start). Use warm-up or a
  smaller lr than SGD's edge-of-stability value. With heavy-ball momentum the gap is much wider:
  on a 1-D quadratic with mu = 0.9, SGD is stable up to lr * L = 3.8 but AdaRem only up to about
  lr * L = 0.05-0.1, because the resilience factor, driven by the lagging tracker d, amplifies the
  heavy ball's own oscillation. ``adarem_m`` therefore needs a much smaller lr than SGD-momentum
  (tests/optim/test_adarem_behaviour.py checks both limits).
* Low precision: the state has the parameter's dtype (fp16/bf16 parameters keep fp16/bf16 ``d``
  and ``u``); the per-tensor scalars are computed in at least fp32 (fp64 for fp64 parameters; the
  foreach path on the CPU uses fp64 host floats for every dtype), and so are lr, momentum and
  weight decay, which only the stored result is rounded with: torch's CPU ``add(..., alpha=x)``
  rounds ``x`` itself to a bf16/fp16 tensor's dtype (lr 0.1 would step as 0.10009765625, momentum
  0.9 as 0.8984375), so the for-loop path steps fp32 copies of fp16/bf16 tensors, and the foreach
  path on the CPU uses ``addcmul(..., value=x)`` instead (fp32 arithmetic, one rounding). With
  decoupled weight decay the foreach path steps an fp16/bf16 ``theta`` as
  ``theta - lr * (delta + w * theta)``, so that it is rounded once a step, as the for-loop path's
  fp32 copy is (``theta *= 1 - lr * w`` first would round it twice).
* Momentum switched off (``mu = 0``) leaves an existing ``u`` alone on every path, as the rule
  does; switched on again, ``u`` continues from there.
* ``load_state_dict`` takes ``max|d|`` from the loaded ``d`` (derived state), and refuses in one
  line a state that cannot be AdaRem's (another optimizer's groups, trackers of other shapes).
* Non-finite gradients give non-finite weights on every path (as the rule does), but not always
  the same non-finite value: for an infinite gradient the rule gives ``-inf``/``+inf``, while the
  fast paths' ``g + c*d*|g|`` can give ``inf - inf = NaN``. Checking for it would cost the hot
  paths a pass; skip such steps instead (``GradScaler`` does). The other weights of the tensor stay
  finite, as the rule has them, on every path but the multi-tensor foreach one (the foreach path
  of non-CPU devices, and of the CPU with ``FOREACH_TENSOR_MAJOR = False``) for fp16/bf16 tensors, whose tracker update (``lerp``, one rounding) makes that element's ``d``
  NaN and so ``s`` and the whole tensor the step after.
* fp16 on the foreach paths holds ``delta = r*g`` in fp16: where ``|r*g|`` passes 65504 (an fp16
  gradient above 32752 with ``r`` near 2) it is ``inf``, where the for-loop and fused paths, in
  fp32, step by a finite amount.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import numbers
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from adarem.fsync import replace_durably
from adarem.optim.ranges import ADAREM_RANGES, describe, in_range

__all__ = ["AdaRem"]


def _hyperparameter_value(name: str, value) -> float:
    """The number a hyperparameter stands for, or ValueError naming it. Only lr may be a tensor (one
    real element, for torch.compile'd schedules): the paths read the others as host numbers, and a
    tensor beta or decay would be computed in the tensor's dtype (an fp16 decay made lambda^t/eps
    overflow: NaN weights). A bool, string, None or tuple (Adam-style betas) is no number here."""
    if isinstance(value, Tensor):
        if name == "lr" and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
            return float(value)
        raise ValueError(f"Invalid {name}: {value!r}; AdaRem needs {name} as a Python number"
                         f"{' or a one-element real tensor' if name == 'lr' else ' (only lr may be a tensor)'}"
                         f" in {describe(name)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r}; AdaRem needs {name} as a number in {describe(name)}")
    return value


def _validate_hyperparameters(h: dict) -> None:
    for name in ADAREM_RANGES:  # NaN fails every range
        value = _hyperparameter_value(name, h[name])
        if not in_range(name, value):
            raise ValueError(f"Invalid {name}: {h[name]!r}; AdaRem needs {name} in {describe(name)}")
    # Flags are read as truth values: "no" or None would silently mean True or False.
    for name in ("decoupled_weight_decay", "maximize"):
        if not isinstance(h[name], bool):
            raise ValueError(f"Invalid {name}: {h[name]!r}; AdaRem needs True or False")
    for name in ("foreach", "fused"):  # None: pick the default path, as torch's optimizers do
        if h[name] is not None and not isinstance(h[name], bool):
            raise ValueError(f"Invalid {name}: {h[name]!r}; AdaRem needs None, True or False")
    if h["fused"] and h["foreach"]:
        raise ValueError("AdaRem: fused=True and foreach=True cannot both be set; pick one")


def _zero_dim_lr(group: dict) -> None:
    """A one-element tensor lr of shape (1,) (or (1, 1)) as a 0-dim view of it: the same storage,
    so a scheduler that fills the caller's tensor still sets it, and torch.compile'd steps, which
    broadcast it against 0-dim tensors, work (they failed on shape (1,); helper-88)."""
    lr = group.get("lr")
    if isinstance(lr, Tensor) and lr.dim() > 0:
        group["lr"] = lr.reshape(())


def _check_group(group: dict) -> None:
    """What a parameter group must satisfy to be added (constructor or add_param_group)."""
    _validate_hyperparameters(group)
    if len({id(p) for p in group["params"]}) < len(group["params"]):
        # torch only warns; the fused kernel then updates both copies at once from the state before
        # the step (garbage, racing on the same memory), the other paths step the weight twice
        raise ValueError("AdaRem: a parameter group lists the same parameter twice; pass each parameter once "
                         "(e.g. list(dict.fromkeys(params)), or model.parameters(), which lists tied weights once)")
    if any(torch.is_complex(p) for p in group["params"]):
        raise ValueError("AdaRem does not support complex parameters; "
                         "view them as real with torch.view_as_real")
    for p in group["params"]:
        sharded = _sharded_kind(p)
        if sharded:
            raise ValueError(f"AdaRem does not support {sharded} parameters (shape {tuple(p.shape)}): the rule's "
                             f"s = max|d| is over the whole tensor, and a sharded rank holds a piece of it, which "
                             f"no path gathers across ranks; train with DDP (whole tensors on every rank)")
    if group["fused"] and any(p.device.type == "cpu" for p in group["params"]):
        _require_cpu_kernel()  # fail here, not at the first step


def _sharded_kind(p: Tensor) -> Optional[str]:
    """What kind of per-rank shard ``p`` is (a DTensor of FSDP2 or tensor parallelism, an FSDP flat
    parameter or FSDP's view of an original parameter's shard), or None. Every path failed on a DTensor midway through the step (after updating the
    weight), and on a flat parameter would take s over this rank's shard only. Looked up in
    sys.modules: where torch.distributed's modules are not imported, no such tensor exists (and
    importing them costs ~0.7 s)."""
    for module, name, kind in (("torch.distributed.tensor", "DTensor", "DTensor (FSDP2, tensor parallel)"),
                               # torch < 2.5 (pyproject allows 2.4): DTensor is only there
                               ("torch.distributed._tensor", "DTensor", "DTensor (FSDP2, tensor parallel)"),
                               ("torch.distributed.fsdp._flat_param", "FlatParameter", "FSDP flat")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(p, cls):
            return kind
    # FSDP1 with use_orig_params=True: each original parameter is a 1-D view of this rank's piece of
    # a flat parameter, marked so by FSDP (torch.distributed.fsdp._common_utils._is_fsdp_flattened)
    if getattr(p, "_fsdp_flattened", False):
        return "FSDP (use_orig_params=True)"
    return None


def _check_loaded_state(state: dict) -> None:
    """ValueError, in one line, for a state that cannot be this optimizer's: a group without one of
    AdaRem's hyperparameters, a tracker or momentum buffer of another shape than its tensor, or a
    tensor's state without ``step`` and ``exp_avg``. Values are not range-checked: a schedule may
    have taken lr to 0 before the state was saved.
    ``state`` is what ``__setstate__`` receives (Optimizer.load_state_dict's state keyed by the
    parameters, after any load_state_dict pre-hook) before it replaces anything."""
    for i, group in enumerate(state.get("param_groups", [])):
        missing = [name for name in ADAREM_RANGES if name not in group]
        if missing:  # another optimizer's groups (SGD's have no beta, decay or eps): KeyError at the step
            raise ValueError(f"AdaRem.load_state_dict: param group {i} has no {', '.join(missing)} "
                             f"(keys {sorted(k for k in group if k != 'params')}); it is not an AdaRem "
                             f"state: load the state_dict that AdaRem saved")
    params = [p for group in state.get("param_groups", []) for p in group["params"]]
    index = {id(p): i for i, p in enumerate(params)}
    for p, st in state.get("state", {}).items():
        if not torch.is_tensor(p) or not st:
            continue
        where = f"the state of parameter {index.get(id(p), '?')} (shape {tuple(p.shape)})"
        missing = [name for name in ("step", "exp_avg") if name not in st]
        if missing:
            raise ValueError(f"AdaRem.load_state_dict: {where} has no {' or '.join(missing)} (keys {sorted(st)}); "
                             f"it is not an AdaRem state: load the state_dict that AdaRem saved")
        for name in ("exp_avg", "momentum_buffer"):
            v = st.get(name)
            if v is not None and (not torch.is_tensor(v) or v.shape != p.shape):
                got = f"shape {tuple(v.shape)}" if torch.is_tensor(v) else f"a {type(v).__name__}"
                raise ValueError(f"AdaRem.load_state_dict: {where} has {name} of {got}; the state_dict was saved "
                                 f"for another model or parameter order: load it into the parameters it was saved with")


class AdaRem(Optimizer):
    """AdaRem optimizer. See the module docstring for the update rule.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: base learning rate (> 0). Default 0.1.
        beta: decay of the direction tracker ``d``, in [0, 1). Default 0.9.
        decay: resilience decay ``lambda`` in (0, 1]; the adaptive part shrinks as ``lambda**t``.
            Default 0.999.
        momentum: heavy-ball momentum on the resilient update, in [0, 1). Default 0.
        eps: guard of the normalisation (>= 0). Default 1e-8.
        weight_decay: L2 penalty (>= 0). Default 0.
        decoupled_weight_decay: apply ``theta <- theta - lr*w*theta`` (AdamW style) instead of
            adding ``w*theta`` to the gradient. Default False.
        maximize: ascend instead of descend. Default False.
        foreach: use the foreach path (tensor-major with reused scratch buffers on the CPU,
            multi-tensor ``torch._foreach_*`` ops elsewhere). ``None`` (default) picks it unless
            ``fused``; ``False`` gives the for-loop path.
        fused: use the fused path (one pass over memory per tensor): ``torch.compile`` (Triton)
            on CUDA, a C++ kernel compiled once per machine on the CPU (needs a C++ compiler and
            ninja). Default False/None.

    ``torch.compile(opt.step)``: as for torch's own optimizers, a float lr is a constant of the
    compiled step, so every change of it (a scheduler) recompiles the step, and after dynamo's
    recompile limit the step runs uncompiled. Give the lr as a tensor instead
    (``lr=torch.tensor(0.1)``; torch's LR schedulers update it in place): the compiled step then
    reads its value at every step and is not recompiled. Eager steps read a tensor lr as a float.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 0.1,
        beta: float = 0.9,
        decay: float = 0.999,
        momentum: float = 0.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        defaults = dict(
            lr=lr, beta=beta, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
            foreach=foreach, fused=fused,
        )
        _validate_hyperparameters(defaults)
        super().__init__(params, defaults)  # checks every group through add_param_group
        self._scratch: dict = {}  # reusable temporaries of the foreach path; not in the state_dict

    def add_param_group(self, param_group: dict) -> None:
        # torch fills in the defaults as it appends the group, so the group is checked once it is
        # in; a group that is refused is taken out again, or the next step would apply it.
        super().add_param_group(param_group)
        try:
            _check_group(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise
        _zero_dim_lr(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        # Optimizer.load_state_dict checks only the number of tensors per group: a state saved for
        # other shapes (another model, another parameter order) would be taken and fail at the next
        # step, midway, after updating the tensors before it. Refuse it before anything is replaced.
        _check_loaded_state(state)
        super().__setstate__(state)
        self.__dict__.setdefault("_scratch", {})
        for group in self.param_groups:
            _zero_dim_lr(group)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)
        # The step count is a float32 tensor on the host, so that lambda**t needs no sync:
        # Optimizer.load_state_dict moves a fused group's `step` to the parameter's device (as for
        # torch's fused optimizers), and a hand-made or converted state may hold a number or an
        # integer tensor (as torch's Adam, accept it: the step adds 1.0 to it in place).
        for st in self.state.values():
            step = st.get("step")
            if step is not None and not (torch.is_tensor(step) and step.is_floating_point() and step.is_cpu):
                st["step"] = torch.tensor(float(step), dtype=torch.float32)
            # max|d| is derived state: taken from the d that was loaded, not trusted from the file, where
            # it may not be d's (trackers averaged or edited: b would leave [-1, 1], r leave [0, 2]).
            # Exact, so a plain resume is unchanged; the inf-norm needs no |d|-sized temporary.
            d = st.get("exp_avg")
            if torch.is_tensor(d) and d.numel() > 0:
                st["max_abs_exp_avg"] = torch.linalg.vector_norm(d, float("inf")).to(d.dtype)

    # ------------------------------------------------------------------ state
    def _init_group(self, group: dict, params: list, grads: list, exp_avgs: list, maxes: list, bufs: list,
                    steps: list) -> None:
        """Fill the lists with the group's tensors that have a gradient (creating their state).

        Torch's signature convention (lists filled in place, nothing returned but constants):
        torch.compile runs this method eagerly instead of tracing it, as for torch's optimizers.
        Raises for a sparse gradient or a complex parameter before it creates that tensor's state
        (step() drops the state it created for the tensors before)."""
        for p in group["params"]:
            if p.grad is None or p.numel() == 0:
                continue  # empty tensors are skipped, as the contract says
            if p.grad.is_sparse:
                raise RuntimeError("AdaRem does not support sparse gradients; "
                                   "use dense gradients (e.g. nn.Embedding(sparse=False))")
            if torch.is_complex(p):
                raise RuntimeError("AdaRem does not support complex parameters")
            if not p.is_floating_point():  # an integer tensor with a hand-set .grad failed midway
                raise RuntimeError(f"AdaRem steps floating-point parameters only; a {p.dtype} parameter of shape "
                                   f"{tuple(p.shape)} has a .grad: set it to None or leave the tensor out")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["max_abs_exp_avg"] = torch.zeros((), dtype=p.dtype, device=p.device)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # A weight whose dtype changed under its state: refused before any tensor is updated (the
            # fast paths failed midway, after the weight; the loop path stepped fp64 with fp32 state).
            if state["exp_avg"].dtype is not p.dtype:
                raise RuntimeError(
                    f"AdaRem: a {p.dtype} parameter of shape {tuple(p.shape)} has {state['exp_avg'].dtype} state: "
                    f"it changed dtype after its state was made (model.to(dtype) after a step?); cast the state "
                    f"to the parameters with opt.load_state_dict(opt.state_dict())")
            if "max_abs_exp_avg" not in state:  # derived state, e.g. from a hand-made state dict
                state["max_abs_exp_avg"] = state["exp_avg"].abs().max().to(p.dtype)
            if group["momentum"] > 0 and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            maxes.append(state["max_abs_exp_avg"])
            # With mu = 0 the rule leaves u alone (it continues from there if mu comes back): no
            # buffer is handed to a path then, or the fused ones would step it as u <- 0*u + delta.
            bufs.append(state["momentum_buffer"] if group["momentum"] > 0 else None)
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Every group is read and checked (sparse gradients, complex parameters, the CPU kernel)
        # before any is updated: a step that raises leaves weights and step counts as they were,
        # instead of having updated the groups before the one that failed, and drops the state it
        # created (an entry that existed may keep a zero buffer it gained: a zero buffer or a
        # zero state at step 0 steps exactly as a missing one).
        work = []
        known = len(self.state)
        try:
            for group in self.param_groups:
                lists = ([], [], [], [], [], [])  # params, grads, exp_avgs, maxes, bufs, steps
                self._init_group(group, *lists)
                if lists[0]:
                    if group["fused"] and FUSED_CPU_KERNEL and any(p.is_cpu for p in lists[0]):
                        _require_cpu_kernel()  # e.g. a state_dict that made a group fused
                    work.append((group, *lists))
        except Exception:
            for p in list(self.state)[known:]:  # the zero state created for this step's tensors
                del self.state[p]
            raise

        fused = ([], [], [], [], [], [], [])  # every fused group's tensors go into one call
        for group, params, grads, exp_avgs, maxes, bufs, steps in work:
            # Steps are counted on the CPU (like torch's non-capturable optimizers), so that
            # lambda**t is a host scalar and needs no device sync.
            torch._foreach_add_(steps, 1.0)
            if torch.compiler.is_compiling() and not group["fused"]:
                # under torch.compile(opt.step): tensors, not host floats, or the compiled step
                # would be specialised on lambda^t and recompiled at every step
                lam_t = [torch.pow(group["decay"], t.double()) for t in steps]
            else:
                lam_t = [group["decay"] ** int(t) for t in torch.stack(steps).tolist()]
            if group["fused"]:
                kw = _group_keywords(group)
                hp = _hp_rows(kw, lam_t)
                for acc, xs in zip(fused, (params, grads, exp_avgs, maxes, bufs, hp, [kw] * len(params))):
                    acc.extend(xs)
                continue
            impl = _foreach_adarem if group["foreach"] in (None, True) else _single_tensor_adarem
            impl(params, grads, exp_avgs, maxes, bufs, lam_t, **_group_keywords(group),
                 **({"scratch": self._scratch} if impl is _foreach_adarem else {}))
        if fused[0]:
            _fused_adarem(*fused, scratch=self._scratch)  # updates each max_abs_exp_avg in place
        return loss


# ---------------------------------------------------------------------- for-loop path
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _host_lr(lr: float | Tensor) -> float | Tensor:
    """The lr as a host float; under torch.compile a tensor lr stays a tensor, so that the compiled
    step reads its value instead of being specialised (and recompiled) on it."""
    return lr if torch.compiler.is_compiling() and isinstance(lr, Tensor) else float(lr)


def _single_tensor_adarem(params, grads, exp_avgs, maxes, bufs, lam_t, *, lr, beta, momentum,
                          eps, weight_decay, decoupled, maximize) -> None:
    """The readable path: one tensor at a time, line by line as in the contract. Updates ``maxes``
    (each tensor's max|d|) in place, as every path does: the state keeps its tensors.

    fp16/bf16 tensors are stepped as fp32 copies, stored back (rounded once) at the end: on the CPU,
    ``add(..., alpha=lr)`` on a bf16 tensor would round lr itself to bf16, and ``s + eps`` would be
    bf16 too. fp32/fp64 tensors are updated in place."""
    lr = _host_lr(lr)
    for param, grad, d_state, s_state, u_state, lam in zip(params, grads, exp_avgs, maxes, bufs, lam_t):
        p, d, s, u = param, d_state, s_state, u_state
        if p.dtype in _LOW_PRECISION:
            p, grad, d, s = p.float(), grad.float(), d.float(), s.float()
            u = None if u is None else u.float()
        g = -grad if maximize else grad
        if weight_decay > 0 and not decoupled:
            g = g.add(p, alpha=weight_decay)
        denom = s + eps
        # s + eps == 0 only when d == 0 everywhere: any finite divisor then gives b = 0.
        b = torch.sign(g) * d / torch.where(denom == 0, 1.0, denom)
        r = 1 + lam * b
        delta = r * g
        if momentum > 0:
            u.mul_(momentum).add_(delta)
            delta = u
        if weight_decay > 0 and decoupled:
            p.mul_(1 - lr * weight_decay)
        p.add_(delta, alpha=-lr)
        d.mul_(beta).add_(g, alpha=1 - beta)
        if p is not param:  # fp32 copies of fp16/bf16 tensors
            param.copy_(p)
            d_state.copy_(d)
            if u is not None:
                u_state.copy_(u)
        s_state.copy_(d_state.abs().max())  # of d as stored


# ---------------------------------------------------------------------- foreach path
def _indices_by_device_and_dtype(params: list[Tensor]) -> dict:
    """Multi-tensor ops need one device and dtype per call: {(device, dtype): [indices]}, by
    torch's own grouping (``Optimizer._group_tensors_by_device_and_dtype``)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([params], with_indices=True)
    return {key: list(indices) for key, (_, indices) in grouped.items()}


def _resilience_scale(maxes: list[Tensor], lam_t: list, eps: float) -> tuple[Optional[list[Tensor]], list[Tensor]]:
    """``(k, c)``, 0-dim tensors (fp32, or fp64 for fp64 parameters) with ``k_i * c_i`` =
    lambda^t_i / (s_i + eps), so that ``c_i * (k_i * d)`` is lambda^t * d / (s + eps); c_i = 0
    where s_i + eps == 0. Stays on the device: no host sync.

    ``k`` is None (all 1) unless eps is below the type's smallest normal number (eps = 0, say):
    only then can s + eps be subnormal, where lambda^t / (s + eps) overflows to inf (and inf * 0 is
    NaN). There k_i = 2^64 (exact) where s_i + eps is subnormal and 1 elsewhere; it costs one more
    multiplication of d, which the default eps never pays."""
    s = torch.stack(maxes)
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    if isinstance(lam_t[0], Tensor):  # under torch.compile (see step)
        lam = torch.stack(lam_t).to(s.device, s.dtype)
    else:
        lam = torch.tensor(lam_t, dtype=s.dtype)
        if s.device.type == "cuda":
            lam = lam.pin_memory()  # pinned + non_blocking: the upload does not sync the host
        lam = lam.to(s.device, non_blocking=True)
    denom = s + eps
    divisor = torch.where(denom == 0, torch.ones_like(denom), denom)
    k = None
    tiny = torch.finfo(s.dtype).tiny
    if eps < tiny:
        k = torch.where(denom < tiny, 2.0 ** 64, 1.0).to(s.dtype)
        divisor = divisor * k
    c = torch.where(denom == 0, 0.0, lam / divisor)
    return (None if k is None else list(k.unbind(0))), list(c.unbind(0))


_FLOAT32_MAX = torch.finfo(torch.float32).max
_FLOAT64_MAX = torch.finfo(torch.float64).max

# None: the foreach path runs tensor-major on the CPU and with multi-tensor ops elsewhere; tests set
# it to False to check the multi-tensor variant on the CPU too.
FOREACH_TENSOR_MAJOR: Optional[bool] = None


def _scale_on_host(s: float, lam: float, eps: float) -> float:
    """c = lambda^t / (s + eps) as a Python float (fp64, at least the parameter's precision); 0
    where s + eps == 0 (d all zero), NaN where s is NaN (as in the rule)."""
    denom = s + eps
    return lam / denom if denom != 0 else 0.0


# torch's CPU add(x, y, alpha=a) rounds a to x's dtype when that is fp16/bf16 (lr 0.1 steps as
# 0.10009765625, momentum 0.9 as 0.8984375); addcmul(x, y, 1, value=a) computes x + a*y in fp32
# (opmath) and rounds once, into the result. fp32/fp64, and other devices (whose add takes alpha in
# opmath), keep add.
_ONE = {dtype: torch.ones((), dtype=dtype) for dtype in _LOW_PRECISION}


def _one_if_alpha_rounds(device: torch.device, dtype: torch.dtype) -> Optional[Tensor]:
    """The 0-dim 1 that _add_scaled needs where add(..., alpha=) would round alpha, else None."""
    return _ONE.get(dtype) if device.type == "cpu" else None


def _add_scaled(x: Tensor, y: Tensor, alpha: float, one: Optional[Tensor], out: Tensor) -> Tensor:
    """out = x + alpha * y with alpha in at least fp32 (``one`` from _one_if_alpha_rounds)."""
    if one is None:
        return torch.add(x, y, alpha=alpha, out=out)
    return torch.addcmul(x, y, one, value=alpha, out=out)


def _foreach_add_scaled(xs: list[Tensor], ys: list[Tensor], alpha, one: Optional[Tensor],
                        inplace: bool) -> Optional[list[Tensor]]:
    """xs + alpha * ys as _add_scaled does it (into xs when ``inplace``). Under torch.compile
    alpha may be a tensor (a tensor lr), which _foreach_add takes only as a number."""
    if isinstance(alpha, Tensor):
        ys = torch._foreach_mul(ys, alpha)
        return torch._foreach_add_(xs, ys) if inplace else torch._foreach_add(xs, ys)
    if one is None:
        return torch._foreach_add_(xs, ys, alpha=alpha) if inplace else torch._foreach_add(xs, ys, alpha=alpha)
    ones = [one] * len(xs)
    if inplace:
        return torch._foreach_addcmul_(xs, ys, ones, value=alpha)
    return torch._foreach_addcmul(xs, ys, ones, value=alpha)


def _update_tracker(d: Tensor, a: Tensor, beta: float, one: Optional[Tensor], s: float) -> None:
    """d = beta*d + (1-beta)*a in place, for the CPU foreach path, which knows ``s = max|d|`` on the
    host. ``d.lerp_(a, 1-beta)`` (one pass, one rounding) computes d + (1-beta)*(a - d): an infinite
    element of d (from an infinite gradient) became inf - inf = NaN, so s = NaN turned every weight
    of the tensor NaN where the rule leaves all but that one finite; and a - d overflows for huge d
    and a of opposite signs. Where s is not finite or is past a quarter of the dtype's range, the
    rule's own form is used (two passes, as the loop path writes it); lerp's a - d can then still
    overflow only for a gradient past three quarters of the range (fp32: 2.5e38)."""
    if s <= torch.finfo(d.dtype).max / 4:  # False for NaN
        d.lerp_(a, 1 - beta)
        return
    d.mul_(beta)
    _add_scaled(d, a, 1 - beta, one, out=d)


def _scratch_views(scratch: dict, key, tensors: list[Tensor], n: int) -> list[Tensor]:
    """``n`` reusable flat buffers as large as the largest of ``tensors``, one per (device, dtype).

    Kept by the optimizer across steps (not in its state_dict): allocating fresh temporaries of the
    parameters' size every step costs more than the arithmetic on CPU (page faults)."""
    numel = max(t.numel() for t in tensors)
    buf = scratch.get(key)
    if buf is None or buf.shape[1] < numel:
        device, dtype = key
        buf = scratch[key] = torch.empty((n, numel), device=device, dtype=dtype)
    return list(buf.unbind(0))


def _foreach_adarem(params, grads, exp_avgs, maxes, bufs, lam_t, *, lr, beta, momentum, eps,
                    weight_decay, decoupled, maximize, scratch: Optional[dict] = None,
                    tensor_major: Optional[bool] = None) -> None:
    """The multi-tensor path. Both variants below use ``r*g = g + c*d*|g|`` (``sign(g)*g = |g|``
    exactly), so no ``r`` tensor is formed, and neither changes the caller's ``.grad``.

    * CPU (``tensor_major``): torch's ``_foreach_*`` ops are a C++ loop over per-tensor kernels
      there, so nothing is lost by running the whole update one tensor at a time, while the
      tensor's data is still in cache, into two reusable scratch buffers (``scratch``): per tensor
      ``A = g + w*theta`` (or ``g`` itself), ``B = |A|``, ``B = A + c*d*B`` (= delta),
      ``theta -= lr*B``, ``d.lerp_(A, 1-beta)`` (see _update_tracker) and ``aminmax(d)``; the scalars ``s`` and ``c``
      are host floats in fp64 (on the CPU reading them is no device sync).
    * other devices: ``_foreach_*`` ops over the whole group (multi-tensor kernels), ``c`` as 0-dim
      device tensors and ``max|d|`` from one ``_foreach_norm(d, inf)``: no host sync at all.
    """
    lr = _host_lr(lr)
    coupled = weight_decay > 0 and not decoupled
    compiling = torch.compiler.is_compiling()
    for (device, dtype), idx in _indices_by_device_and_dtype(params).items():
        if compiling:  # torch's grouping gives one (None, None) group under torch.compile
            device, dtype = params[idx[0]].device, params[idx[0]].dtype
        p_ = [params[i] for i in idx]
        d_ = [exp_avgs[i] for i in idx]
        g_ = [grads[i] for i in idx]
        u_ = [bufs[i] for i in idx]
        lam_ = [lam_t[i] for i in idx]
        if tensor_major is None:
            tensor_major = FOREACH_TENSOR_MAJOR
        tm = device.type == "cpu" if tensor_major is None else tensor_major
        tm = tm and not compiling  # compiled, the multi-tensor form: Inductor fuses it; no host scalars
        one = _one_if_alpha_rounds(device, dtype)
        if tm:
            if scratch is None:
                scratch = {}
            a_buf, b_buf = _scratch_views(scratch, (device, dtype), p_, 2)
            for k, (p, g, d, u) in enumerate(zip(p_, g_, d_, u_)):
                n = p.numel()
                s = maxes[idx[k]]
                s = float(s) if s.device.type == "cpu" else float(s.cpu())
                c = _scale_on_host(s, lam_[k], eps)
                b = b_buf[:n].view_as(p) if p.is_contiguous() else torch.empty_like(p)
                if coupled or maximize:
                    a = a_buf[:n].view_as(p) if p.is_contiguous() else torch.empty_like(p)
                    if maximize:
                        torch.neg(g, out=a)
                        if coupled:
                            _add_scaled(a, p, weight_decay, one, out=a)
                    else:
                        _add_scaled(g, p, weight_decay, one, out=a)
                else:
                    a = g  # only read
                torch.abs(a, out=b)
                den = s + eps
                if dtype != torch.float64 and abs(c) > _FLOAT32_MAX:  # eps ~0 and a subnormal or zero s
                    den = float(torch.tensor(den, dtype=torch.float32))
                    c = 0.0 if den == 0 else c  # s + eps == 0 in fp32 (d all zero): b = 0, as the loop path
                if abs(c) <= (_FLOAT64_MAX if dtype == torch.float64 else _FLOAT32_MAX) or c != c:
                    # delta = g + (c*d)*|g| = r*g; c*d in [-lam^t, lam^t] is formed first (ATen
                    # computes value*tensor1 first): c*|g| overflows where c ~ 1/eps (s ~ 0)
                    torch.addcmul(a, d, b, value=c, out=b)
                else:  # c overflows (fp64 too, with a subnormal fp64 s): divide per element instead
                    b.mul_(d).div_(den).mul_(lam_[k]).add_(a)
                step_dir = b
                if momentum > 0:
                    _add_scaled(b, u, momentum, one, out=u)  # u = mu*u + delta
                    step_dir = u
                if weight_decay > 0 and decoupled:
                    if dtype in _LOW_PRECISION:
                        # theta - lr*(delta + w*theta), theta rounded once as in the loop path: a
                        # separate mul_ rounded an fp16/bf16 theta twice a step (fp16: 5x the loop
                        # path's error after 100 steps). b is free once u holds delta.
                        _add_scaled(step_dir, p, weight_decay, one, out=b)
                        step_dir = b
                    else:
                        p.mul_(1 - lr * weight_decay)
                _add_scaled(p, step_dir, -lr, one, out=p)
                _update_tracker(d, a, beta, one, s)
                lo, hi = torch.aminmax(d)  # reads d once, no |d| temporary
                # an element of |d|, so exact in the state's dtype; updated in place, no allocation
                maxes[idx[k]].fill_(max(float(hi), -float(lo)))
            continue
        if maximize:
            a_ = torch._foreach_neg(g_)
            if coupled:
                _foreach_add_scaled(a_, p_, weight_decay, one, inplace=True)
        elif coupled:
            a_ = _foreach_add_scaled(g_, p_, weight_decay, one, inplace=False)
        else:
            a_ = g_  # only read
        k_, c_ = _resilience_scale([maxes[i] for i in idx], lam_, eps)
        if k_ is None:
            e_ = torch._foreach_mul(d_, c_)  # c*d in [-1, 1] first: no fp16 overflow of c*|g|
        else:  # eps below the normal range (see _resilience_scale)
            e_ = torch._foreach_mul(d_, k_)
            torch._foreach_mul_(e_, c_)
        b_ = torch._foreach_addcmul(a_, e_, torch._foreach_abs(a_))  # delta = g + c*d*|g| = r*g
        low = dtype in _LOW_PRECISION
        if weight_decay > 0 and decoupled and not low:
            torch._foreach_mul_(p_, 1 - lr * weight_decay)
        if momentum > 0:
            if low:  # u = delta + mu*u rounded once, not mu*u first
                _foreach_add_scaled(b_, u_, momentum, one, inplace=True)  # b_ is a temporary
                torch._foreach_copy_(u_, b_)
            else:
                torch._foreach_mul_(u_, momentum)
                torch._foreach_add_(u_, b_)
                b_ = u_
        if weight_decay > 0 and decoupled and low:
            # theta - lr*(delta + w*theta): theta rounded once, as in the loop path (see the CPU variant)
            _foreach_add_scaled(b_, p_, weight_decay, one, inplace=True)  # b_ is a temporary (holds u)
        _foreach_add_scaled(p_, b_, -lr, one, inplace=True)
        if low:  # one rounding of d, as the loop path's; a - d cannot overflow in fp32 inside
            torch._foreach_lerp_(d_, a_, 1 - beta)
        else:  # not lerp: see _update_tracker (s is on the device here, and no host sync is made)
            torch._foreach_mul_(d_, beta)
            _foreach_add_scaled(d_, a_, 1 - beta, one, inplace=True)
        torch._foreach_copy_([maxes[i] for i in idx], torch._foreach_norm(d_, float("inf")))


# ---------------------------------------------------------------------- fused path
# Columns of the per-tensor hyperparameter table that the fused kernel reads.
# Combinations of hyperparameters (1 - beta, keep = 1 - lr * wd_decoupled) are formed on the host in
# double precision: in fp32, 1 - 0.9 is 0.100000024, a bias on every step's tracker update.
_HP = ("lr", "lam", "beta", "one_minus_beta", "eps", "wd_coupled", "keep", "sign", "momentum")


def _group_keywords(group: dict) -> dict:
    # lr as given: each path reads it as a host float (_host_lr), except a tensor lr under torch.compile
    return dict(lr=group["lr"], beta=group["beta"], momentum=group["momentum"], eps=group["eps"],
                weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
                maximize=group["maximize"])


def _hp_rows(kw: dict, lam_t: list[float]) -> list[list[float]]:
    """One row per tensor (columns ``_HP``) for a group with keywords ``kw``."""
    lr, wd = float(kw["lr"]), kw["weight_decay"]
    coupled = 0.0 if kw["decoupled"] else wd
    keep = 1.0 - lr * wd if kw["decoupled"] else 1.0
    sign = -1.0 if kw["maximize"] else 1.0
    return [[lr, lam, kw["beta"], 1.0 - kw["beta"], kw["eps"], coupled, keep, sign, kw["momentum"]]
            for lam in lam_t]


def _fused_kernel(params, grads, exp_avgs, maxes, bufs, hp):
    """One pass per tensor: read p, g, d (and u), write p, d (and u) and max|d_new| (into ``maxes``,
    in place).

    Written per tensor so that Inductor fuses every pointwise op of a tensor with the max
    reduction of its new ``d`` into one loop. Every hyperparameter is a row of the device
    tensor ``hp`` (columns ``_HP``), so a schedule, a growing step count or any number of
    parameter groups with different settings never recompiles: the compiled graph depends only
    on the tensors' shapes and dtypes and on which tensors have a momentum buffer. Options
    that are off cost nothing measurable: maximize off multiplies by +1, weight decay 0 selects
    the plain gradient.
    """
    for i, (p, grad, d, s) in enumerate(zip(params, grads, exp_avgs, maxes)):
        cdt = torch.promote_types(p.dtype, torch.float32)  # never below the parameter's precision
        h = hp[i].to(cdt)
        lr, lam, beta, one_minus_beta, eps, wdc, keep, sgn, mom = h.unbind(0)
        pf = p.to(cdt)
        g = grad.to(cdt) * sgn
        g = torch.where(wdc != 0, g + wdc * pf, g)  # no "+ 0 * p": a NaN weight must not reach d
        df = d.to(cdt)
        denom = s.to(cdt) + eps
        # A subnormal s + eps (eps = 0, say) would make lambda^t / denom inf, and inf * 0 NaN:
        # there d and denom are both scaled by k = 2^64 (exact); elsewhere k = 1.
        k = torch.where(denom < torch.finfo(cdt).tiny, 2.0 ** 64, 1.0)
        c = torch.where(denom == 0, 0.0, lam / torch.where(denom == 0, 1.0, denom * k))
        delta = (1 + c * torch.sign(g) * (df * k)) * g
        if bufs[i] is not None:
            u_new = mom * bufs[i].to(cdt) + delta
            bufs[i].copy_(u_new)
            delta = u_new
        p.copy_(pf * keep - lr * delta)
        d_new = beta * df + one_minus_beta * g
        d.copy_(d_new)
        s.copy_(d.abs().amax())


# Tensors per compiled call. Functionalization moves every in-place write (p, d, u, s) to the end
# of the graph; in a graph of 161 tensors those writes sit too far from their computation for
# Inductor's fusion search (max_fusion_buffer_group_pairwise_attempts), and each tensor then
# gets separate loops, a temporary and a copy-back: resnet50's step took 111 ms single-threaded
# instead of 31 ms. Small chunks keep each tensor's update one loop; repeated blocks of a network
# give chunks of the same structure, which share one compiled function.
_FUSED_CHUNK = 8

# One compiled function per structure (shapes, dtypes, momentum flags): each gets a fresh code
# object, because dynamo's recompile limit counts per code object and a process may step several
# optimizers (or a model whose set of gradient-carrying tensors changes) with distinct structures.
_compiled_kernels: dict = {}


def _compiled_for(key):
    fn = _compiled_kernels.get(key)
    if fn is None:
        code = _fused_kernel.__code__.replace()  # a distinct code object, same function
        fresh = type(_fused_kernel)(code, _fused_kernel.__globals__, f"_fused_kernel_{len(_compiled_kernels)}")
        fn = _compiled_kernels[key] = torch.compile(fresh, fullgraph=True, dynamic=False)
    return fn


@torch.compiler.disable  # already one compiled kernel: torch.compile(opt.step) runs it as it is
def _fused_adarem(params, grads, exp_avgs, maxes, bufs, hparams, keywords, *, scratch: dict) -> None:
    """``hparams``: one row per tensor (columns ``_HP``), host floats; ``keywords``: each tensor's
    group keywords (for the tensors the CPU kernel hands back). Updates ``maxes`` in place."""
    for (device, _), idx in _indices_by_device_and_dtype(params).items():
        if device.type == "cpu" and FUSED_CPU_KERNEL:
            _fused_adarem_cpu(*([xs[i] for i in idx] for xs in (params, grads, exp_avgs, maxes, bufs,
                                                                 hparams, keywords)), scratch=scratch)
            continue
        table = torch.tensor([hparams[i] for i in idx], dtype=torch.float64)
        if device.type == "cuda":  # pinned + non_blocking: no host-device sync for the upload
            table = table.pin_memory()
        table = table.to(device, non_blocking=True)
        for lo in range(0, len(idx), _FUSED_CHUNK):
            chunk = idx[lo:lo + _FUSED_CHUNK]
            ps = [params[i] for i in chunk]
            bs = [bufs[i] for i in chunk]
            key = (device, tuple((p.shape, p.dtype, p.stride()) for p in ps),
                   tuple(b is not None for b in bs))
            # a fresh, offset-0 table per chunk: chunks of one structure share a compiled function
            hp = table[lo:lo + len(chunk)]
            _compiled_for(key)(ps, [grads[i] for i in chunk], [exp_avgs[i] for i in chunk],
                               [maxes[i] for i in chunk], bs, hp if lo == 0 else hp.clone())


# ---------------------------------------------------------------------- fused path, CPU kernel
# On the CPU the fused path is a hand-written C++ kernel (adarem_fused_cpu.cpp next to this file):
# Inductor's C++ code took 1.45x torch's fused AdamW on resnet50 (per-tensor calls and parallel
# regions); the kernel runs every tensor of a step in one parallel loop. It takes fp32 and fp64
# tensors whose p, grad, d and u share one dense layout and hands the others back, which then step
# with the foreach path (the faster one for fp16/bf16 on the CPU). It is built once per machine by
# torch.utils.cpp_extension (about 7 s; needs a C++ compiler and ninja) and kept in
# $TORCH_EXTENSIONS_DIR/adarem (default ~/.cache/torch_extensions/adarem) under a name that
# digests what the binary depends on: the source, the flags, the compiler's version, torch's
# build and Python's version and, since it is built with -march=native, the CPU (model, flags or
# features, from /proc/cpuinfo), so nodes of different CPU types sharing a home directory each
# get their own. Tests set FUSED_CPU_KERNEL to False to run the compiled (Inductor C++) variant on
# the CPU, so that the code CUDA runs through Triton is checked without a GPU.
FUSED_CPU_KERNEL = True
_CPU_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adarem_fused_cpu.cpp")
# -fopenmp: at::parallel_for is inline OpenMP in torch's headers; without it the loop runs on one
# thread (measured: no speed-up from 1 to 2 threads). The library then uses libgomp.so.1, which is
# the one torch has loaded already (same soname), so torch.set_num_threads governs it.
_CPU_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
_CPU_KERNEL_LOCK = threading.Lock()
_VOLATILE_CPUINFO = ("cpu mhz", "bogomips", "processor", "core id", "apicid", "initial apicid",
                     "physical id", "siblings", "cpu cores")


def _build_identity() -> list[str]:
    """Everything the kernel's binary depends on besides its source and flags."""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = sorted({ln.strip() for ln in fh
                          if ln.strip() and not ln.lower().startswith(_VOLATILE_CPUINFO)})
    except OSError:
        cpu = [platform.machine(), platform.processor(), platform.platform()]
    cxx = os.environ.get("CXX", "c++")  # the compiler torch.utils.cpp_extension uses
    try:  # its first line names compiler and version (a chatty wrapper's later lines must not count)
        out = subprocess.run([*shlex.split(cxx), "--version"], capture_output=True, text=True, timeout=30).stdout
        version = (out.strip().splitlines() or ["unavailable"])[0]
    except (OSError, ValueError, subprocess.SubprocessError):
        version = "unavailable"
    return [*cpu, cxx, version, torch.__version__, str(torch.version.git_version),
            str(torch._C._GLIBCXX_USE_CXX11_ABI), sys.version]


def _one_line(exc: BaseException) -> str:
    """The cause of a failed build or load in one line (cpp_extension's message starts with the
    whole compile command)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln for ln in lines[1:] if re.search(r"error|not found|no such|denied|required", ln, re.I)]
    line = causes[0] if causes else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {line[:300]}"


def _load_cpu_kernel() -> None:
    """Load the kernel's library, building it first if this machine has none yet.

    Builders serialise on an flock, which the OS releases when a process dies: a job killed while
    building (preemption, SIGKILL) leaves no stale lock behind, unlike cpp_extension's own lock
    file, and the next builder clears what it left. Each build happens in its own temporary
    directory and is installed by an atomic rename, fsynced, with a checksum written next to it
    and verified before every load: a damaged library (a node that crashed while installing) is
    rebuilt instead of crashing the process that maps it. Where the cache cannot be locked (no
    flock on the filesystem, no fcntl) builds go unserialised but still install; where it cannot
    be written, the build is private to this process."""
    if hasattr(torch.ops.adarem, "fused_step_cpu_"):  # loaded already (a module reload, say)
        return
    with open(_CPU_SOURCE, "rb") as fh:
        parts = [fh.read(), " ".join(_CPU_CFLAGS).encode(), *(x.encode() for x in _build_identity())]
    name = "adarem_fused_cpu_" + hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    root = os.path.join(os.path.abspath(os.environ.get("TORCH_EXTENSIONS_DIR")
                                        or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")),
                        "adarem")
    lib = os.path.join(root, name + ".so")
    if _intact(lib):
        torch.ops.load_library(lib)
        return
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    lock = None
    if writable:
        try:
            import fcntl
            lock = open(os.path.join(root, name + ".lock"), "a")
            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no locking here: builds may duplicate work, nothing worse
            if lock is not None:
                lock.close()
            lock = None
    try:
        if _intact(lib):  # another process built it while this one waited
            torch.ops.load_library(lib)
            return
        if lock is not None:  # no other builder of this name is running: clear what killed ones left
            for stale in glob.glob(os.path.join(root, f"build-{name}-*")) + glob.glob(os.path.join(root, f".{name}.*")):
                shutil.rmtree(stale, ignore_errors=True) if os.path.isdir(stale) else os.remove(stale)
        build = tempfile.mkdtemp(prefix=f"build-{name}-", dir=root if writable else None)
        try:
            with _cpp_extension() as cpp_extension:
                cpp_extension.load(name=name, sources=[_CPU_SOURCE], extra_cflags=_CPU_CFLAGS,
                                   extra_ldflags=["-fopenmp"], build_directory=build,
                                   is_python_module=False, verbose=False)
            if writable:  # load() has loaded the library into this process already
                _install(os.path.join(build, name + ".so"), lib)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    finally:
        if lock is not None:
            lock.close()


def _checksum(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _intact(lib: str) -> bool:
    """The library exists and matches the checksum installed after it (mapping a truncated shared
    object kills the process with SIGBUS, which no exception handler sees)."""
    try:
        with open(lib + ".sha256") as fh:
            return fh.read().strip() == _checksum(lib)
    except OSError:
        return False


def _install(built: str, lib: str) -> None:
    """The library, then its checksum (which is what marks ``lib`` as complete), each staged and
    renamed into place durably."""
    root, base = os.path.split(lib)
    staged = os.path.join(root, f".{base}.{os.getpid()}")
    shutil.copyfile(built, staged + ".so")
    replace_durably(staged + ".so", lib)
    with open(staged + ".sha256", "w") as fh:
        fh.write(_checksum(built))
    replace_durably(staged + ".sha256", lib + ".sha256")


@contextlib.contextmanager
def _cpp_extension():
    """torch.utils.cpp_extension, quiet: its import warns that a CPU-only machine has no CUDA
    runtime, and a failing build logs a multi-line compiler banner; the caller reports one line."""
    import logging
    import warnings

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        from torch.utils import cpp_extension
        try:
            import ninja  # the pip package's binary, where the virtual environment is not on PATH
            if shutil.which("ninja") is None:
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield cpp_extension
    finally:
        log.setLevel(level)


@functools.lru_cache(maxsize=None)
def _cpu_kernel_error_once() -> Optional[str]:
    try:
        _load_cpu_kernel()
        torch.ops.adarem.fused_step_cpu_  # registered by the library
    except Exception as exc:  # noqa: BLE001 - any build or load failure means "not available"
        return _one_line(exc)
    return None


def cpu_kernel_error() -> Optional[str]:
    """Build (first time on this machine) and load the CPU kernel; None if it is usable, else why
    not, in one line. Built and loaded once per process, whichever thread asks first."""
    with _CPU_KERNEL_LOCK:
        return _cpu_kernel_error_once()


def _kernel_message(why: str) -> str:
    return (f"AdaRem(fused=True) on the CPU needs its C++ kernel, which did not build or load ({why}); "
            f"install a C++ compiler and ninja (pip install ninja), or use foreach=True")


@torch.compiler.disable  # a lock and a build: nothing to trace
def _require_cpu_kernel() -> None:
    why = cpu_kernel_error()
    if why is not None:
        raise RuntimeError(_kernel_message(why))


def _fused_adarem_cpu(params, grads, exp_avgs, maxes, bufs, hparams, keywords, *, scratch) -> None:
    # step() checked already that the kernel loads (also after a load_state_dict that switched
    # groups to fused, where the constructor did not)
    rejected = torch.ops.adarem.fused_step_cpu_(params, grads, exp_avgs, maxes, bufs,
                                                torch.tensor(hparams, dtype=torch.float64))
    # The op writes through data pointers: bump the version counters as in-place ops do, so that
    # autograd still refuses a backward through a weight this step changed.
    torch.autograd.graph.increment_version(params + exp_avgs + maxes + [u for u in bufs if u is not None])
    for i in rejected.tolist():  # fp16/bf16, or layouts that differ between p, grad and state
        _foreach_adarem([params[i]], [grads[i]], [exp_avgs[i]], [maxes[i]], [bufs[i]],
                        [hparams[i][_HP.index("lam")]], **keywords[i], scratch=scratch)
