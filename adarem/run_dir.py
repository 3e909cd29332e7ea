"""Decide, before anything is written, what a launch does with its run directory.

``resume=auto``: continue from the directory's latest checkpoint (or start fresh if it has
none); a finished run is reported and left untouched. ``resume=never``: start fresh, refusing a
directory that already holds a run. ``resume=<path>``: start from that checkpoint file.
A directory that holds a run of a different configuration is always refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adarem import checkpoint as ckpt_io
from adarem.config import ConfigError
from adarem.run_record import FINAL_STATUSES, config_differences, read_run_json


@dataclass
class RunPlan:
    previous: Optional[dict]  # the existing run.json, if any
    checkpoint: Optional[dict]  # what to resume from, if anything
    checkpoint_path: Optional[Path]
    already_done: bool = False  # a finished run: report and exit


def plan_run(run_dir: Path, resume: str, config: dict) -> RunPlan:
    previous = read_run_json(run_dir)
    if previous is not None:
        if previous.get("status") in FINAL_STATUSES:
            if resume == "auto":
                return RunPlan(previous, None, None, already_done=True)
            raise ConfigError(f"{run_dir} holds a {previous['status']} run; it is never overwritten: "
                              f"choose another hydra.run.dir (or resume=auto to report it)")
        if resume == "never":
            raise ConfigError(f"{run_dir} holds an unfinished run (status {previous.get('status')}); "
                              f"use resume=auto to continue it or choose another hydra.run.dir")
        diff = config_differences(previous.get("config", {}), config)
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config (differs in {', '.join(diff[:6])}); "
                              f"choose another hydra.run.dir or restore those values")
    if resume == "never":
        return RunPlan(previous, None, None)
    if resume == "auto":
        found = ckpt_io.load_latest(run_dir)
        if found is None:
            return RunPlan(previous, None, None)
        return RunPlan(previous, found[0], found[1])
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume={resume!r}: no such checkpoint file; use auto, never or a checkpoint path")
    return RunPlan(previous, ckpt_io.load(path), path)
