"""Optimizers: AdaRem itself and the factory that builds every benchmarked optimizer.

Attributes are imported on first use: adarem.config reads adarem.optim.ranges before torch is
imported (the one-line config check of the entry points)."""

import importlib

__all__ = ["AdaRem", "register_with_timm"]

_DEFINED_IN = {"AdaRem": "adarem", "register_with_timm": "timm_registry"}
_SUBMODULES = ("adarem", "factory", "ranges", "timm_registry")


def __getattr__(name: str):
    if name in _DEFINED_IN:
        return getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
    if name in _SUBMODULES:  # reachable as attributes, as before the lazy import
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'adarem.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
