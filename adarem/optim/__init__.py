"""Optimizers: AdaRem itself and the factory that builds every benchmarked optimizer."""

from adarem.optim.adarem import AdaRem
from adarem.optim.timm_registry import register_with_timm

__all__ = ["AdaRem", "register_with_timm"]
