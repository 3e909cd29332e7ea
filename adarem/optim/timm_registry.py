"""Make AdaRem available to ``timm.optim.create_optimizer_v2``.

timm splits optimizer names on ``"_"`` (``lookahead_adamw``), so the benchmark's variant names
``adarem_m`` and ``adarem_nodecay`` are registered as ``adaremm`` and ``adaremnodecay``.
"""

from __future__ import annotations

from adarem.optim.adarem import AdaRem

TIMM_NAMES = {
    "adarem": {},
    "adaremm": {"momentum": 0.9},
    "adaremnodecay": {"decay": 1.0},
}


def register_with_timm() -> None:
    """Register the AdaRem variants in timm's default optimizer registry (idempotent)."""
    from timm.optim._optim_factory import OptimInfo, default_registry

    for name, defaults in TIMM_NAMES.items():
        if name in default_registry.list_optimizers():
            continue
        default_registry.register(OptimInfo(
            name=name,
            opt_class=AdaRem,
            description=f"AdaRem (arXiv 2010.11041), {defaults or 'defaults'}",
            has_eps=True,
            has_momentum=False,  # timm would otherwise force momentum=0.9 on the plain variant
            has_betas=False,
            defaults=defaults or None,
        ))
