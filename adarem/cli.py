"""Command-line plumbing of train.py: one-line error messages and a pre-flight composition.

A bad override, a run directory that cannot be created or a configuration error must reach the
user as one ``error:`` line with exit code 2, never as Hydra's multi-line report or a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    prefix = f"{type(exc).__name__}: "
    for line in reversed(lines):
        if line.startswith(prefix) or f".{prefix}" in line:
            return line.split(prefix, 1)[1]
    return lines[0] if lines else type(exc).__name__


def preflight(argv: list[str]) -> None:
    """Compose the config as @hydra.main will, so that a bad override (unknown key or option,
    wrong type) fails with one line instead of Hydra's multi-line report, and check that the run
    directory (which Hydra creates before train() runs) can be created. Skipped for sweeps and
    Hydra's own flags."""
    if not argv or any(a.startswith("-") for a in argv) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = compose("config", overrides=argv, return_hydra_config=True)
        HydraConfig.instance().set_config(composed)  # ${hydra:...} in a value resolves as under @hydra.main
        run_dir = Path(str(OmegaConf.select(composed, "hydra.run.dir")))
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
        noise = ("full_key:", "reference_type", "object_type", "Config search path", "provider=",
                 "Set the environment variable", "To append to your config")
        lines: list[str] = []
        while exc is not None:  # the cause (e.g. "Key 'foo' not in 'TrainerConfig'") says the most
            lines += [line.strip() for line in str(exc).splitlines()
                      if line.strip() and not line.strip().startswith(noise) and line.strip() not in lines]
            exc = exc.__cause__
        message = "; ".join(lines).replace(":; ", ": ").replace(".; ", "; ")
        if any(ord(c) > 127 for c in " ".join(argv)):
            message += " (values with non-ASCII characters must be quoted: key='value')"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(f"error: cannot create or write the run directory {run_dir} ({exc.strerror}); choose a writable "
              f"hydra.run.dir", file=sys.stderr)
        sys.exit(2)
