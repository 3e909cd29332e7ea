"""Build the benchmarked optimizers (SGD, Adam, AdamW, AdaRem) from an OptimizerConfig.

``optimizer.impl`` picks the implementation by one rule for every optimizer: ``auto`` takes the
fastest path on the device the model's parameters are on (the fused one where it exists there:
torch's fused SGD/Adam/AdamW on the devices this torch build has them for, AdaRem's compiled path
on CUDA and its C++ kernel on the CPU), ``fused``/``foreach``/``loop`` force one.
``optimizer_impl(optimizer)`` says which one a built optimizer runs, for the run record.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from adarem.config import OptimizerConfig
from adarem.optim.adarem import AdaRem


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and (optionally) parameters without decay: biases, norm
    scales/shifts (1-D) and whatever the model lists in ``no_weight_decay()``, by timm's own rule
    (``timm.optim.param_groups_weight_decay``). Decaying biases and norm parameters is known to
    hurt (Goyal et al. 2017), so recipes usually exclude them.

    The decayed group comes first, as it always has here: a checkpoint's optimizer state is
    matched to the groups by position.
    """
    if not exclude_bias_and_norm or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    decay = [p for g in groups if g["weight_decay"] for p in g["params"]]
    no_decay = [p for g in groups if not g["weight_decay"] for p in g["params"]]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adarem_fused_devices(device_types: set[str]) -> tuple[str, ...]:
    """Where AdaRem's fused path is taken by auto: CUDA (compiled by Triton once per process; runs
    there are long), and the CPU when its C++ kernel builds here (once per machine, then cached;
    0.06 s to load). Without a compiler auto says why, once, and takes foreach on the CPU."""
    devices = ["cuda"]
    if "cpu" in device_types:
        from adarem.optim.adarem import cpu_kernel_error
        why = cpu_kernel_error()
        if why is None:
            devices.append("cpu")
        else:
            warnings.warn(f"optimizer.impl=auto: AdaRem's fused CPU kernel is unavailable ({why}); "
                          f"using foreach", stacklevel=3)
    return tuple(devices)


def _torch_fused_devices() -> tuple[str, ...]:
    """Device types for which this torch build has fused SGD/Adam/AdamW kernels."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return tuple(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # an older or newer torch without the helper
        return ("cuda",)


def impl_flags(impl: str, name: str, device_types: set[str]) -> dict:
    """The constructor flags (foreach/fused) that ``impl`` means for optimizer ``name`` when its
    parameters are on ``device_types``."""
    if impl == "auto":
        fused_ok = _adarem_fused_devices(device_types) if name == "adarem" else _torch_fused_devices()
        impl = "fused" if device_types and device_types <= set(fused_ok) else "foreach"
    return {"fused": dict(fused=True), "foreach": dict(foreach=True),
            "loop": dict(foreach=False)}[impl]


def fused_cpu_kernel_missing(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """Why AdaRem's fused CPU kernel cannot run here, if ``optimizer`` needs it (a fused AdaRem
    group with CPU parameters, chosen at the run's start or restored from its checkpoint)."""
    if isinstance(optimizer, AdaRem) and any(
            g.get("fused") and any(p.device.type == "cpu" for p in g["params"]) for g in optimizer.param_groups):
        from adarem.optim.adarem import cpu_kernel_error
        return cpu_kernel_error()
    return None


def _kernel_takes(p: torch.Tensor) -> bool:
    """Whether AdaRem's fused CPU kernel steps ``p`` itself (adarem_fused_cpu.cpp's ``takes``, read
    off the parameter: its gradient and state share its layout): fp32/fp64, non-empty, and dense
    (its elements tile one block of memory, in any order of dimensions)."""
    if p.dtype not in (torch.float32, torch.float64) or p.numel() == 0:
        return False
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(p.shape, p.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """The path a built optimizer steps with: fused, foreach or loop (joined with '+' where its
    tensors take several). Unset flags are resolved as torch resolves them at step time. AdaRem's
    fused CPU kernel steps only the tensors it takes (``_kernel_takes``) and hands the others
    (fp16/bf16, empty or strided ones) to its foreach path: a fused group of them says so."""
    found = set()
    for group in optimizer.param_groups:
        if group.get("fused") and isinstance(optimizer, AdaRem):
            found.update("fused" if p.device.type != "cpu" or _kernel_takes(p) else "foreach" for p in group["params"])
        elif group.get("fused"):
            found.add("fused")
        elif group.get("foreach") is None:
            if isinstance(optimizer, AdaRem):
                found.add("foreach")  # AdaRem's default
            else:
                from torch.optim.optimizer import _default_to_fused_or_foreach
                _, foreach = _default_to_fused_or_foreach(group["params"], False, False)
                found.add("foreach" if foreach else "loop")
        else:
            found.add("foreach" if group["foreach"] else "loop")
    return "+".join(sorted(found)) or "none"


def resilience_decay(cfg: OptimizerConfig, total_steps: int) -> float:
    """AdaRem's lambda: ``cfg.decay``, or with ``cfg.decay_horizon`` = h > 0 the lambda with
    lambda^(h * total_steps) = 0.01 (the resilience is 1 % of its start after that fraction)."""
    if cfg.decay_horizon <= 0:
        return cfg.decay
    return 0.01 ** (1.0 / max(1.0, cfg.decay_horizon * total_steps))


def build_optimizer(cfg: OptimizerConfig, model: nn.Module, total_steps: int = 0) -> torch.optim.Optimizer:
    """``model``'s parameters must already be on their device: ``impl=auto`` decides by it.
    ``total_steps`` (the run's optimizer steps) is needed with ``decay_horizon``."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.no_weight_decay_on_bias_and_norm)
    if cfg.foreach is not None or cfg.fused is not None:  # legacy flags, only with impl=auto
        flags = {k: v for k, v in (("foreach", cfg.foreach), ("fused", cfg.fused)) if v is not None}
    else:
        devices = {p.device.type for g in groups for p in g["params"]}
        flags = impl_flags(cfg.impl, cfg.name, devices)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **flags)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **flags)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **flags)
    if cfg.name == "adarem":
        if cfg.decay_horizon > 0 and total_steps <= 0:
            raise ValueError("optimizer.decay_horizon needs the run's total steps")
        return AdaRem(groups, lr=cfg.lr, beta=cfg.beta, decay=resilience_decay(cfg, total_steps), momentum=cfg.momentum,
                      eps=cfg.eps, decoupled_weight_decay=cfg.decoupled_weight_decay, **flags)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # the config schema rejects it first
