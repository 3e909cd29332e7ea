"""Build the benchmarked optimizers (SGD, Adam, AdamW, AdaRem) from an OptimizerConfig."""

from __future__ import annotations

import torch
from torch import nn

from adarem.config import OptimizerConfig
from adarem.optim.adarem import AdaRem


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and (optionally) biases and norm parameters without decay.

    1-D tensors are biases or norm scales/shifts in every model this suite builds; decaying them
    is known to hurt (Goyal et al. 2017), so recipes usually exclude them.
    """
    if not exclude_bias_and_norm or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.no_weight_decay_on_bias_and_norm)
    flags = {}
    if cfg.foreach is not None:
        flags["foreach"] = cfg.foreach
    if cfg.fused is not None:
        flags["fused"] = cfg.fused
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **flags)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **flags)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **flags)
    if cfg.name == "adarem":
        return AdaRem(groups, lr=cfg.lr, beta=cfg.beta, decay=cfg.decay, momentum=cfg.momentum,
                      eps=cfg.eps, decoupled_weight_decay=cfg.decoupled_weight_decay, **flags)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # the config schema rejects it first
