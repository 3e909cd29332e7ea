"""A run's identity: a short hash of its full resolved configuration.

Every key that can change the result is part of it; only the keys listed in ``NOT_IDENTITY``
(where output goes, how often to log or checkpoint, how many loader workers, which device a
resumed job lands on) are left out. The default run directory ends in this hash
(``configs/config.yaml`` uses the ``${run_id:}`` resolver), so two configurations never share a
directory, and a finished directory is only ever reported for the configuration that made it.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# keys that cannot change what a run computes (or that a requeued job may legitimately change)
NOT_IDENTITY = ("resume", "logging", "run_dir", "notes", "hydra", "trainer.max_steps", "trainer.log_every",
                "trainer.checkpoint_every_min", "trainer.stop_check_every", "data.num_workers", "trainer.device")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_identity_key(key: str) -> bool:
    return not any(key == p or key.startswith(p + ".") for p in NOT_IDENTITY)


def identity_items(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if is_identity_key(k)}


def run_id(config: dict) -> str:
    """10 hex digits of the SHA-1 of the identity keys (sorted JSON)."""
    blob = json.dumps(identity_items(config), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def config_differences(old: dict, new: dict) -> list[str]:
    """Flattened identity keys whose values differ between two resolved configurations."""
    a, b = identity_items(old), identity_items(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _run_id_resolver(*, _root_: DictConfig) -> str:
    # resolve everything except hydra's own node and run_dir, which depend on this very value
    plain = {k: v for k, v in OmegaConf.to_container(_root_, resolve=False).items() if k not in ("hydra", "run_dir")}
    return run_id(OmegaConf.to_container(OmegaConf.create(plain), resolve=True))


def register_resolver() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_resolver)
