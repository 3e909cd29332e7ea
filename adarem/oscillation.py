"""Do the weights oscillate? Two measures, logged every ``every`` steps (the paper's motivation).

``flip_fraction``: the fraction of weights whose last two updates (steps t-1 and t) both moved and
pointed in opposite directions, overall and per parameter tensor (``per_layer``). It sees only
signs: plain AdaRem (momentum 0), like SGD without momentum, steps against the current gradient's
sign, so its flips must be compared with SGD *without* momentum (the ``sgd_plain`` preset), and a
momentum variant with SGD-momentum.

``path_efficiency``: per weight, over a window of k steps ending at the record step t,
``|theta_t - theta_{t-k}| / sum_s |theta_s - theta_{s-1}|``: 1 for a straight path, 0 for pure
back-and-forth (+1, -1, +1, -1 over an even window), so it weighs each move by its size. Summarised
as the mean over the weights whose path is non-zero, per parameter tensor (``per_layer_efficiency``,
null for a tensor that did not move) and over all of them (``path_efficiency``, null if nothing
moved). ``path_window`` is k: by default ``every`` (at least 2), so the windows tile the run.

Cost: during a window the tracker holds three copies of the weights (start, previous, path length)
and does a few multi-tensor (``torch._foreach_*``) operations per step, all on the weights' device
and without reading anything back; the one host sync is at the record step, where every number of
the record is stacked into one tensor and copied to the host at once. Outside windows (k < every)
it does nothing. A window that a checkpoint falls into is saved with it (``state_dict``: the
start and path-length copies, and the last update before a record step; not the previous weights,
which are the checkpoint's weights), so a run resumed in the middle of a window still writes that
window's record, equal to an uninterrupted run's. That costs a checkpoint written inside a window
two copies of the weights (start, path length), three at the step before a record step (the last
update too), only when ``trainer.oscillation_every`` is on: for SGD with momentum, whose
checkpoint already holds two (weights, momentum), about twice the size (digits small_cnn: 866 KB
-> 1.70 MB). All three are needed to write the window's record exactly; fewer (or lower-precision)
copies would change resumed numbers, so none is dropped. A checkpoint written outside a window holds
none, nor does the final checkpoint of a finished run (no step follows it). A checkpoint of an
older version, without the tracker's state, skips that window's record.
"""

from __future__ import annotations

import torch
from torch import nn


def path_window(every: int, window: int | None = None) -> int:
    """The window k (in steps) path efficiency is measured over, for a record every ``every``
    steps (0: off): ``window`` or ``every``, at most ``every`` (windows never overlap) and at least 2
    (the flips need two consecutive updates inside it) unless every step is recorded. The tables
    derive it for records written before ``path_window`` was logged."""
    k = window or every
    return max(1, min(k, every)) if every == 1 else max(2, min(k, every)) if every > 0 else 0


class OscillationTracker:
    def __init__(self, model: nn.Module, every: int, window: int | None = None):
        self.every = every
        self.window = path_window(every, window)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._tensors = [p for _, p in self.params]
        self._start: list[torch.Tensor] | None = None
        self._prev: list[torch.Tensor] | None = None
        self._path: list[torch.Tensor] | None = None
        self._last_delta: list[torch.Tensor] | None = None  # the update of the step before a record step

    def state_dict(self) -> dict | None:
        """The window in progress (None outside one), for the checkpoint: the previous weights are
        the checkpoint's own, so they are not stored (``load_state_dict`` takes them from the model)."""
        if self.every <= 0 or (self._start is None and self._last_delta is None):
            return None
        cpu = lambda ts: None if ts is None else [t.detach().cpu().clone() for t in ts]  # noqa: E731
        return {"every": self.every, "window": self.window, "names": [n for n, _ in self.params],
                "start": cpu(self._start), "path": cpu(self._path), "last_delta": cpu(self._last_delta)}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue the window saved by ``state_dict`` (after the model's weights were restored).
        None (a checkpoint outside a window, or of a version that did not save it) leaves none."""
        self._start = self._prev = self._path = self._last_delta = None
        if not state:
            return
        names = [n for n, _ in self.params]
        if state.get("every") != self.every or state.get("window") != self.window or state.get("names") != names:
            raise ValueError(f"the checkpoint's oscillation window (every {state.get('every')}, window "
                             f"{state.get('window')}) was saved for other settings or parameters than this run's")

        def on_device(ts):
            if ts is None:
                return None
            if len(ts) != len(self._tensors) or any(t.shape != p.shape for t, p in zip(ts, self._tensors)):
                raise ValueError("the checkpoint's oscillation window does not fit this model's parameters")
            return [t.to(device=p.device, dtype=p.dtype).clone(memory_format=torch.preserve_format)
                    for t, p in zip(ts, self._tensors)]

        self._start, self._path, self._last_delta = (on_device(state.get(k)) for k in ("start", "path", "last_delta"))
        if self._start is not None:
            self._prev = self._snapshot()  # the weights after the checkpoint's step

    def _snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self._tensors]

    def _steps_to_record(self, step: int) -> int:
        return (-step) % self.every  # 0 on a record step

    def before_step(self, step: int) -> None:
        """Call before optimizer step number ``step`` (1-based)."""
        if self.every <= 0:
            return
        if self._steps_to_record(step) == self.window - 1:  # the window's first step
            self._start = self._snapshot()
            self._prev = self._snapshot()
            self._path = [torch.zeros_like(p) for p in self._start]

    @torch.no_grad()
    def after_step(self, step: int) -> dict | None:
        """Call after optimizer step ``step``; returns the record on sampled steps."""
        if self.every <= 0 or self._prev is None:
            return None
        cur = [p.detach() for p in self._tensors]
        delta = torch._foreach_sub(cur, self._prev)
        torch._foreach_copy_(self._prev, cur)
        torch._foreach_add_(self._path, torch._foreach_abs(delta))
        last_delta, self._last_delta = self._last_delta, None
        if (step + 1) % self.every == 0:
            self._last_delta = delta  # the first of the two updates the next record's flips compare
        if self._steps_to_record(step):
            return None
        start, path = self._start, self._path
        self._start = self._prev = self._path = None
        if last_delta is None:  # resumed just before a record step (or the run's first step, every=1)
            return None
        net = torch._foreach_sub(cur, start)
        torch._foreach_abs_(net)
        rows = []
        for d1, d2, n, s in zip(last_delta, delta, net, path):
            s1, s2 = torch.sign(d1), torch.sign(d2)
            moved = (s1 != 0) & (s2 != 0)
            flips = ((s1 != s2) & moved).sum()
            has_path = s > 0
            eff = torch.where(has_path, n / torch.where(has_path, s, torch.ones_like(s)), torch.zeros_like(s))
            eff = eff.clamp_(max=1.0)  # rounding can put |net| a hair above the path length
            rows.append(torch.stack([flips.double(), moved.sum().double(), eff.sum(dtype=torch.float64),
                                     has_path.sum().double()]))
        if not rows:
            return None
        table = torch.stack(rows).cpu().tolist()  # the record's one host sync
        per_layer, per_layer_eff = {}, {}
        flips = total = eff_sum = n_path = 0.0
        for (name, _), (n_flip, n_moved, e_sum, n_p) in zip(self.params, table):
            per_layer[name] = n_flip / n_moved if n_moved else 0.0
            per_layer_eff[name] = e_sum / n_p if n_p else None
            flips, total, eff_sum, n_path = flips + n_flip, total + n_moved, eff_sum + e_sum, n_path + n_p
        return {"type": "oscillation", "step": step, "flip_fraction": flips / total if total else 0.0,
                "per_layer": per_layer, "path_efficiency": eff_sum / n_path if n_path else None,
                "per_layer_efficiency": per_layer_eff, "path_window": self.window}
