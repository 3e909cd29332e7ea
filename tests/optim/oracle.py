"""The oracle: a slow, line-by-line implementation of ../shared/ALGORITHM.md.

It is deliberately independent of ``adarem.optim.adarem``: no cached max, no foreach, no fusion.
Every fast path is checked against it.
"""

from __future__ import annotations

import torch

DEFAULTS = dict(lr=0.1, beta=0.9, decay=0.999, momentum=0.0, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, maximize=False)


class OracleAdaRem:
    """Holds per-tensor state keyed by index; ``step(params, grads, hparams)`` mutates params."""

    def __init__(self):
        self.state: dict[int, dict] = {}

    @torch.no_grad()
    def step_tensor(self, key: int, theta: torch.Tensor, grad: torch.Tensor | None, h: dict) -> None:
        if grad is None or theta.numel() == 0:
            return
        st = self.state.setdefault(key, {"t": 0, "d": torch.zeros_like(theta)})
        st["t"] += 1
        t = st["t"]
        g = -grad if h["maximize"] else grad.clone()
        if h["weight_decay"] > 0 and not h["decoupled_weight_decay"]:
            g = g + h["weight_decay"] * theta
        d = st["d"]
        s = d.abs().max()
        denom = s + h["eps"]  # in the parameter's dtype: eps = 1e-8 vanishes in fp16
        if float(denom) == 0:
            b = torch.zeros_like(d)  # d is all zeros: sign(g) * 0 / anything = 0
        else:
            b = torch.sign(g) * d / denom
        r = 1 + h["decay"] ** t * b
        delta = r * g
        if h["momentum"] > 0:
            if "u" not in st:
                st["u"] = delta.clone()
            else:
                st["u"] = h["momentum"] * st["u"] + delta
            delta = st["u"]
        if h["weight_decay"] > 0 and h["decoupled_weight_decay"]:
            theta.sub_(h["lr"] * h["weight_decay"] * theta)
        theta.sub_(h["lr"] * delta)
        st["d"] = h["beta"] * d + (1 - h["beta"]) * g
