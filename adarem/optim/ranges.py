"""AdaRem's hyperparameter ranges, written once: the optimizer's constructor checks them (ValueError)
and the harness's config check (adarem.config) reports them as one line before torch is imported,
which is why this module imports nothing heavy."""

from __future__ import annotations

import math

# name: (low, high, low end open, high end open)
ADAREM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, math.inf, True, True),
    "beta": (0.0, 1.0, False, True),
    "decay": (0.0, 1.0, True, False),
    "momentum": (0.0, 1.0, False, True),
    "eps": (0.0, math.inf, False, True),
    "weight_decay": (0.0, math.inf, False, True),
}


def in_range(name: str, value: float) -> bool:
    """Whether ``value`` lies in AdaRem's range for ``name`` (False for NaN)."""
    lo, hi, lo_open, hi_open = ADAREM_RANGES[name]
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


def describe(name: str) -> str:
    """The range as interval notation, e.g. ``[0, 1)``."""
    lo, hi, lo_open, hi_open = ADAREM_RANGES[name]
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
