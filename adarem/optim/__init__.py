"""Optimizers: AdaRem itself and the factory that builds every benchmarked optimizer.

Attributes are imported on first use: adarem.config reads adarem.optim.ranges before torch is
imported (the one-line config check of the entry points)."""

__all__ = ["AdaRem", "register_with_timm"]


def __getattr__(name: str):
    if name in ("adarem", "factory", "ranges", "timm_registry"):  # submodules, as before the lazy import
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "AdaRem":
        from adarem.optim.adarem import AdaRem

        return AdaRem
    if name == "register_with_timm":
        from adarem.optim.timm_registry import register_with_timm

        return register_with_timm
    raise AttributeError(f"module 'adarem.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
