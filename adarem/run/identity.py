"""A run's identity: a short hash of its full resolved configuration.

Every key that can change the result is part of it; only the keys listed in ``NOT_IDENTITY``
(where output goes, how often to log or checkpoint, how many loader workers, which device a
resumed job lands on) are left out. The default run directory ends in this hash
(``configs/config.yaml`` uses the ``${run_id:}`` resolver), so two configurations never share a
directory, and a finished directory is only ever reported for the configuration that made it.

Schema growth must not change an existing run's identity: a key added to the schema after the
first release is listed in ``ADDED_KEYS`` with its neutral value (the value that reproduces what
runs did before the key existed). A key at its neutral value is left out of the hash, and a
recorded configuration that lacks the key compares equal to one holding the neutral value. A key
whose every value changes what a run computes (``optimizer.impl``: the AdaRem update itself was
rewritten alongside it) gets no entry, so runs recorded before it stay distinct.
"""

from __future__ import annotations

import hashlib
import json
import os

from omegaconf import DictConfig, ListConfig, OmegaConf

# keys that cannot change what a run computes (or that a requeued job may legitimately change)
NOT_IDENTITY = ("resume", "logging", "run_dir", "notes", "hydra", "trainer.max_steps", "trainer.log_every",
                "trainer.checkpoint_every_min", "trainer.stop_check_every", "data.num_workers", "data.cache_samples",
                "trainer.device", "trainer.peer_timeout_s", "trainer.start_timeout_s")

# Keys added to the schema after the first release -> the value that reproduces the old behaviour.
# Register every new identity key here when it is added (one that does not exist yet is harmless).
# Not listed: trainer.stop_check_every, trainer.peer_timeout_s and trainer.start_timeout_s (in NOT_IDENTITY); optimizer.impl (no value
# reproduces the runs recorded before it: impl=auto picked AdaRem's fused path then, and the
# foreach path was rewritten in the same change). What auto chooses is not part of the identity
# (it may change between versions: AdaRem's fused CPU path came and went); run.json records the
# path as optimizer_impl, and a resumed run keeps it (the checkpoint's optimizer groups carry their
# foreach/fused flags; tests/harness/test_train.py).
ADDED_KEYS = {
    "trainer.evals_per_epoch": 1,
    "trainer.bn_recalibrate": 0,
    "optimizer.decay_horizon": 0.0,
    "trainer.sync_bn": False,
}


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


def is_neutral(key: str, value) -> bool:
    """Whether ``key`` holds the value that reproduces the runs recorded before it existed."""
    if key not in ADDED_KEYS:
        return False
    neutral = ADDED_KEYS[key]
    if isinstance(value, bool) or isinstance(neutral, bool):  # True is not 1 here
        return value is neutral
    return value == neutral  # 0 == 0.0: JSON and YAML may spell a number either way


def normalise_root(root, launch_dir: str | None = None):
    """``data.root`` as one spelling per folder: ``~`` expanded, made absolute (against the working
    directory of the launch: ``launch_dir`` where the process has left it, as hydra.job.chdir=true
    does) and normalised, so that ``/data/x``, ``/data/x/``, ``/data//x`` and ``x`` launched from
    ``/data`` are one configuration (they were three run directories and three rows of the tables).
    Links are not resolved: a link may be repointed at other data, which the data identity's
    content hashes tell apart. "" (the dataset's default) stays ""."""
    if not isinstance(root, str) or not root:
        return root
    return os.path.normpath(os.path.join(launch_dir or os.getcwd(), os.path.expanduser(root)))


def identity_items(config: dict, normalise: bool = True) -> dict:
    """The flattened identity keys; a key of ADDED_KEYS at its neutral value is left out, so a
    configuration recorded before the key existed has the same items (and hash). ``data.root`` is
    compared normalised (normalise_root; ``normalise=False``: as spelled, as before it was)."""
    items = {k: v for k, v in flatten(config).items() if is_identity_key(k) and not is_neutral(k, v)}
    if "data.root" in items and normalise:
        items["data.root"] = normalise_root(items["data.root"])
    return items


def run_id(config: dict, normalise: bool = True) -> str:
    """10 hex digits of the SHA-1 of the identity keys (sorted JSON)."""
    blob = json.dumps(identity_items(config, normalise), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def config_differences(old: dict, new: dict) -> list[str]:
    """Flattened identity keys whose values differ between two resolved configurations (a key
    one of them lacks counts as its ADDED_KEYS neutral value, if it has one)."""
    a, b = identity_items(old), identity_items(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def resolved_identity(node: DictConfig, prefix: str = "") -> dict:
    """The identity keys of ``node``, resolved; keys outside the identity are never resolved.
    They may hold ``${hydra:...}`` (logging.group=${hydra:runtime.choices.optimizer}), which
    preflight's composition cannot resolve and which may need this very hash (${hydra:run.dir})."""
    out = {}
    for key in node.keys():
        path = f"{prefix}{key}"
        if not is_identity_key(path):
            continue
        if OmegaConf.is_missing(node, key):
            out[key] = "???"  # as OmegaConf.to_container writes a missing value
            continue
        value = node[key]  # resolves this key's interpolation only
        if isinstance(value, DictConfig):
            out[key] = resolved_identity(value, path + ".")
        elif isinstance(value, ListConfig):
            out[key] = OmegaConf.to_container(value, resolve=True)
        else:
            out[key] = value
    return out


def _run_id_resolver(*, _root_: DictConfig) -> str:
    # hydra's own node and run_dir (outside the identity) depend on this very value
    return run_id(resolved_identity(_root_))


def register_resolver() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_resolver)
