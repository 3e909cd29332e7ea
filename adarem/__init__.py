"""AdaRem benchmarking suite: the optimizer and the harness that checks its claims.

``adarem.AdaRem`` is imported on first use, so that importing the package (and ``adarem.cli``, whose
entry points install their signal handlers before the seconds-long imports) costs nothing.
"""

__all__ = ["AdaRem"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "AdaRem":
        from adarem.optim.adarem import AdaRem

        return AdaRem
    raise AttributeError(f"module 'adarem' has no attribute {name!r}")
