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

Cost: four weight-sized buffers (start, previous, path length, the last update before a record
step), allocated at the first window and reused by every later one, and a few in-place multi-tensor
(``torch._foreach_*``) operations per step inside a window, on the weights' device and without
reading anything back; the one host sync is at the record step, where every number of the record
is stacked into one tensor and copied to the host at once. Outside windows (k < every) it does
nothing. In place because on a CPU a fresh weight-sized tensor per step cost as much as the
arithmetic on it (the earlier version, with temporaries, took twice the CPU time per step on
resnet18's 11.7 M weights); the records are the same bit for bit, which
tests/results/test_oscillation.py checks against the definition. Its share of a training step is
measured by scripts/bench_throughput.py (harness with and without the tracker).
A window that a checkpoint falls into is saved with it (``state_dict``: the
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
        # Buffers, allocated once and reused by every window (module docstring, "Cost")
        self._start: list[torch.Tensor] | None = None  # the weights at the window's start
        self._prev: list[torch.Tensor] | None = None  # the weights after the previous step
        self._path: list[torch.Tensor] | None = None  # sum of |update| over the window
        self._delta: list[torch.Tensor] | None = None  # the update of the step before a record step
        self._in_window = False
        self._has_delta = False

    def state_dict(self) -> dict | None:
        """The window in progress (None outside one), for the checkpoint: the previous weights are
        the checkpoint's own, so they are not stored (``load_state_dict`` takes them from the model)."""
        if self.every <= 0 or not (self._in_window or self._has_delta):
            return None
        cpu = lambda ts, keep: [t.detach().cpu().clone() for t in ts] if keep else None  # noqa: E731
        return {"every": self.every, "window": self.window, "names": [n for n, _ in self.params],
                "start": cpu(self._start, self._in_window), "path": cpu(self._path, self._in_window),
                "last_delta": cpu(self._delta, self._has_delta)}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue the window saved by ``state_dict`` (after the model's weights were restored).
        None (a checkpoint outside a window, or of a version that did not save it) leaves none."""
        self._in_window = self._has_delta = False
        if not state:
            return
        names = [n for n, _ in self.params]
        if state.get("every") != self.every or state.get("window") != self.window or state.get("names") != names:
            raise ValueError(f"the checkpoint's oscillation window (every {state.get('every')}, window "
                             f"{state.get('window')}) was saved for other settings or parameters than this run's")
        saved = {k: state.get(k) for k in ("start", "path", "last_delta")}
        for ts in saved.values():
            if ts is not None and (len(ts) != len(self._tensors)
                                   or any(t.shape != p.shape for t, p in zip(ts, self._tensors))):
                raise ValueError("the checkpoint's oscillation window does not fit this model's parameters")
        self._allocate()
        if saved["start"] is not None:
            torch._foreach_copy_(self._start, saved["start"])
            torch._foreach_copy_(self._path, saved["path"])
            torch._foreach_copy_(self._prev, [p.detach() for p in self._tensors])  # the checkpoint's weights
            self._in_window = True
        if saved["last_delta"] is not None:
            torch._foreach_copy_(self._delta_buffers(), saved["last_delta"])
            self._has_delta = True

    def _allocate(self) -> None:
        """The window's buffers, (re)made where a parameter's dtype, device or shape no longer matches
        (a model moved or cast after the tracker was built): a float32 buffer would round float64
        weights and count unmoved weights as moved. The last update is kept as it was taken
        (``_delta_buffers`` remakes its buffers when it next writes one)."""
        if self._start is None or not all(map(self._fits, self._start, self._tensors)):
            self._start, self._prev, self._path = (self._like_params() for _ in range(3))
        if self._delta is None:
            self._delta = self._like_params()

    @staticmethod
    def _fits(buffer: torch.Tensor, p: torch.Tensor) -> bool:
        return (buffer.dtype, buffer.device, buffer.shape) == (p.dtype, p.device, p.shape)

    def _like_params(self) -> list[torch.Tensor]:
        return [torch.empty_like(p, memory_format=torch.preserve_format) for p in self._tensors]

    def _delta_buffers(self) -> list[torch.Tensor]:
        """The buffers the next last update is written into (remade if the parameters changed)."""
        if not all(map(self._fits, self._delta, self._tensors)):
            self._delta = self._like_params()
        return self._delta

    def _steps_to_record(self, step: int) -> int:
        return (-step) % self.every  # 0 on a record step

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """Call before optimizer step number ``step`` (1-based)."""
        if self.every <= 0:
            return
        if self._steps_to_record(step) == self.window - 1:  # the window's first step
            self._allocate()
            cur = [p.detach() for p in self._tensors]
            torch._foreach_copy_(self._start, cur)
            torch._foreach_copy_(self._prev, cur)
            torch._foreach_zero_(self._path)
            self._in_window = True

    @torch.no_grad()
    def after_step(self, step: int) -> dict | None:
        """Call after optimizer step ``step``; returns the record on sampled steps.

        The update is taken in place as prev - cur (its exact negation: floating-point subtraction
        is antisymmetric), so the records equal those of the definition's cur - prev."""
        if self.every <= 0 or not self._in_window:
            return None
        cur = [p.detach() for p in self._tensors]
        has_last, self._has_delta = self._has_delta, False
        keep = (step + 1) % self.every == 0  # this update is the next record's first of two
        if self._steps_to_record(step):
            if keep:
                for d, c, p in zip(self._delta_buffers(), cur, self._prev):
                    torch.sub(c, p, out=d)
                self._has_delta = True
            torch._foreach_sub_(self._prev, cur)  # minus the update
            torch._foreach_abs_(self._prev)
            torch._foreach_add_(self._path, self._prev)
            torch._foreach_copy_(self._prev, cur)
            return None
        self._in_window = False  # the record step ends the window
        minus = self._prev
        torch._foreach_sub_(minus, cur)  # minus this step's update
        # last_delta is missing when resumed just before a record step (or at every=1's first step)
        rows = self._flip_counts(self._delta, minus) if has_last else None
        if keep:  # every == 1: the next record compares this update
            for d, m in zip(self._delta_buffers(), minus):
                torch.neg(m, out=d).add_(0.0)  # + 0.0: a zero update is +0.0, as cur - prev gives it
            self._has_delta = True
        if rows is None:
            return None
        torch._foreach_abs_(minus)
        torch._foreach_add_(self._path, minus)  # the path now ends at this step
        torch._foreach_sub_(self._start, cur)
        torch._foreach_abs_(self._start)  # |cur - start|, the net move
        for row, net, path in zip(rows, self._start, self._path):
            has_path = path > 0
            eff = net.div_(path).masked_fill_(~has_path, 0.0)
            eff.clamp_(max=1.0)  # rounding can put |net| a hair above the path length
            row += [eff.sum(dtype=torch.float64), torch.count_nonzero(has_path).double()]
        return self._summarise(step, rows)

    @staticmethod
    def _flip_counts(last: list[torch.Tensor], minus: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per tensor, [weights whose two updates flipped, weights moved by both]: sign(d1) and
        sign(d2) both non-zero and different, as torch.sign counts them (NaN has sign 0: not a
        move). d2 = -minus, so a sign bit that differs between d1 and d2 agrees between d1 and minus."""
        rows = []
        for d1, m2 in zip(last, minus):
            moved = ((d1 > 0) | (d1 < 0)) & ((m2 > 0) | (m2 < 0))
            flips = (torch.signbit(d1) == torch.signbit(m2)) & moved
            rows.append([torch.count_nonzero(flips).double(), torch.count_nonzero(moved).double()])  # no int64 copy
        return rows

    def _summarise(self, step: int, rows: list[list[torch.Tensor]]) -> dict | None:
        """The record from per-tensor [flips, moved, efficiency sum, weights with a path]."""
        if not rows:
            return None
        table = torch.stack([torch.stack(r) for r in rows]).cpu().tolist()  # the record's one host sync
        per_layer, per_layer_eff = {}, {}
        flips = total = eff_sum = n_path = 0.0
        for (name, _), (n_flip, n_moved, e_sum, n_p) in zip(self.params, table):
            per_layer[name] = n_flip / n_moved if n_moved else 0.0
            per_layer_eff[name] = e_sum / n_p if n_p else None
            flips, total, eff_sum, n_path = flips + n_flip, total + n_moved, eff_sum + e_sum, n_path + n_p
        return {"type": "oscillation", "step": step, "flip_fraction": flips / total if total else 0.0,
                "per_layer": per_layer, "path_efficiency": eff_sum / n_path if n_path else None,
                "per_layer_efficiency": per_layer_eff, "path_window": self.window}
