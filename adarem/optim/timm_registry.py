"""Make AdaRem available to ``timm.optim.create_optimizer_v2``.

timm splits optimizer names on ``"_"`` (``lookahead_adamw``), so the benchmark's variant names
``adarem_m`` and ``adarem_nodecay`` are registered as ``adaremm`` and ``adaremnodecay``.

Momentum: ``create_optimizer_v2`` takes ``momentum`` as an argument of its own (default 0.9) and
hands it on only to optimizers registered with ``has_momentum``; to any other it is dropped without
a word. So every variant is registered with ``has_momentum`` and receives it:

* ``adaremm`` uses it: ``momentum=0.5`` gives 0.5, no momentum gives timm's 0.9, the variant's.
* ``adarem`` and ``adaremnodecay`` are the variants without momentum (mu = 0). timm cannot say
  whether its caller set momentum, and passes 0.9 when the caller did not (timm's train.py always
  passes its --momentum, default 0.9), so 0 and 0.9 both give mu = 0; any other value is refused
  with a ValueError that points to ``adaremm``. (An explicit ``momentum=0.9`` cannot be told
  from timm's default: it also gives mu = 0. Ask ``adaremm`` for momentum.)
"""

from __future__ import annotations

from adarem.optim.adarem import AdaRem

TIMM_NAMES = {
    "adarem": {},
    "adaremm": {"momentum": 0.9},
    "adaremnodecay": {"decay": 1.0},
}
TIMM_DEFAULT_MOMENTUM = 0.9  # create_optimizer_v2's default for its momentum argument


def _constructor(name: str, settings: dict):
    """The callable timm builds variant ``name`` with: AdaRem, given timm's momentum argument."""
    with_momentum = "momentum" in settings

    def make(params, momentum: float = settings.get("momentum", 0.0), **kwargs) -> AdaRem:
        if with_momentum:
            return AdaRem(params, momentum=momentum, **kwargs)
        if momentum not in (0.0, TIMM_DEFAULT_MOMENTUM):
            raise ValueError(f"timm optimizer {name!r} is AdaRem without momentum, but momentum={momentum!r} "
                             f"was given; use 'adaremm', which takes timm's momentum (default 0.9)")
        return AdaRem(params, **kwargs)

    make.__name__ = make.__qualname__ = f"AdaRem_{name}"
    return make


def register_with_timm() -> None:
    """Register the AdaRem variants in timm's default optimizer registry (idempotent)."""
    from timm.optim._optim_factory import OptimInfo, default_registry

    registered = set(default_registry.list_optimizers())
    for name, settings in TIMM_NAMES.items():
        if name in registered:
            continue
        others = {k: v for k, v in settings.items() if k != "momentum"}
        default_registry.register(OptimInfo(
            name=name,
            opt_class=_constructor(name, settings),
            description=f"AdaRem (arXiv 2010.11041), {settings or 'defaults'}",
            has_eps=True,
            has_momentum=True,  # or timm drops the caller's momentum (see the module docstring)
            has_betas=False,
            # momentum is not a timm default: timm applies these before its momentum argument
            defaults=others or None,
        ))
