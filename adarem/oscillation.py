"""How often do weight updates change sign between consecutive steps? (the paper's motivation)

Every ``every`` steps, the tracker snapshots the weights before step t-1, before step t and after
step t, and reports, overall and per parameter tensor, the fraction of weights whose two updates
both moved and pointed in opposite directions. The snapshots cost two copies of the weights once
per ``every`` steps, cheap enough to leave on.
"""

from __future__ import annotations

import torch
from torch import nn


class OscillationTracker:
    def __init__(self, model: nn.Module, every: int):
        self.every = every
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._before: list[torch.Tensor] | None = None
        self._middle: list[torch.Tensor] | None = None

    def _snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for _, p in self.params]

    def before_step(self, step: int) -> None:
        """Call before optimizer step number ``step`` (1-based)."""
        if self.every <= 0:
            return
        if step % self.every == self.every - 1 or (self.every == 1 and step > 1):
            self._before = self._snapshot()
        if step % self.every == 0 and self._before is not None:
            self._middle = self._snapshot()

    def after_step(self, step: int) -> dict | None:
        """Call after optimizer step ``step``; returns the record on sampled steps."""
        if self.every <= 0 or step % self.every or self._before is None or self._middle is None:
            return None
        flips = total = 0
        per_layer = {}
        for (name, p), b, m in zip(self.params, self._before, self._middle):
            d1, d2 = torch.sign(m - b), torch.sign(p.detach() - m)
            moved = (d1 != 0) & (d2 != 0)
            n_moved = int(moved.sum())
            n_flip = int(((d1 != d2) & moved).sum())
            flips += n_flip
            total += n_moved
            per_layer[name] = n_flip / n_moved if n_moved else 0.0
        self._before = self._middle = None
        return {"type": "oscillation", "step": step, "flip_fraction": flips / total if total else 0.0,
                "per_layer": per_layer}
