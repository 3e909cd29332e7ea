"""AdaRem benchmarking suite: the optimizer and the harness that checks its claims."""

from adarem.optim.adarem import AdaRem

__all__ = ["AdaRem"]
__version__ = "0.1.0"
