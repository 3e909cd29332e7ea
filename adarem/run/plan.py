"""Decide, before anything is written, what a launch does with its run directory.

A directory holding a run of another configuration is always refused, naming the keys that
differ (the default directory name ends in the configuration's hash, so this only happens with
an explicit hydra.run.dir / run_dir). Then ``resume=auto``: continue from the directory's latest
checkpoint (or start fresh if it has none); a finished run is reported and left untouched.
``resume=never``: start fresh, refusing a directory that already holds a run (a run.json, or
checkpoints or metrics whose run.json was moved away). ``resume=<path>``: start from that
checkpoint file, which must come from the same configuration, in a directory that holds no other
run (its metrics would be cut to the other checkpoint's line count and mixed), except the run that
was started from that very checkpoint (run.json's ``resumed_from``): a relaunch of the same command
(a requeue) continues that run as resume=auto would.

``RunLock`` keeps a second process (a double submit, a requeue racing a job that is still
alive) out of a directory that a live process is using; its refusal is a ``RunLocked``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adarem.run import checkpoint as ckpt_io
from adarem.config import ConfigError
from adarem.run.identity import config_differences
from adarem.run.lockfile import lock_or_holder
from adarem.run.record import FINAL_STATUSES, METRICS, finished_record_problem, read_run_json

LOCK = ".lock"


@dataclass
class RunPlan:
    previous: Optional[dict]  # the existing run.json, if any
    checkpoint: Optional[dict]  # what to resume from, if anything
    checkpoint_path: Optional[Path]
    already_done: bool = False  # a finished run: report and exit
    note: Optional[str] = None  # one line for stderr (a relaunch of resume=<path> continuing its own run)

    def foreign(self, run_dir: Path) -> bool:
        """Whether the checkpoint is another directory's (resume=<path>): run.json's resumed_from."""
        own = {(Path(run_dir) / name).resolve() for name in (ckpt_io.LATEST, ckpt_io.PREVIOUS)}
        return self.checkpoint_path is not None and Path(self.checkpoint_path).resolve() not in own


class RunLocked(ConfigError):
    """Another live process holds the run directory (the message names it): not a result of
    this configuration, and not a failure of it either (compare.py stops instead of scoring it)."""


def _differs(what: str, diff: list[str], hint: str) -> ConfigError:
    shown = ", ".join(diff[:6]) + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
    return ConfigError(f"{what} has a different configuration (differs in {shown}); {hint}")


def _checkpoint_of(config: dict, ckpt: dict, what: str, hint: str, unrecorded: Optional[str] = None) -> dict:
    """``ckpt``, if it was written by this configuration: its optimizer and scheduler state would
    otherwise silently override the new settings, so a difference is refused, naming the keys.
    A checkpoint that records no configuration (an older version's) is refused with
    ``unrecorded`` when given, else accepted."""
    if ckpt.get("config") is None:
        if unrecorded:
            raise ConfigError(unrecorded)
        return ckpt
    diff = config_differences(ckpt["config"], config)
    if diff:
        raise _differs(what, diff, hint)
    return ckpt


def _run_files(run_dir: Path) -> list[str]:
    """What of a run the directory holds besides run.json: checkpoints, a non-empty metrics.jsonl."""
    run_dir = Path(run_dir)
    found = [name for name in (ckpt_io.LATEST, ckpt_io.PREVIOUS) if (run_dir / name).exists()]
    metrics = run_dir / METRICS
    if metrics.exists() and metrics.stat().st_size > 0:
        found.append(METRICS)
    return found


def plan_run(run_dir: Path, resume: str, config: dict, said: str = "") -> RunPlan:
    """``said``: how a refusal names the request where it is not ``resume=<resume>`` (resume=auto
    continuing from the checkpoint another directory's run was started from)."""
    said = said or f"resume={resume}"
    try:
        previous = read_run_json(run_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if previous is not None:
        diff = config_differences(previous.get("config") or {}, config)
        if diff:
            raise _differs(f"{run_dir} holds a {previous.get('status', 'unknown')} run that", diff,
                           "choose another hydra.run.dir (the default directory name is unique per "
                           "configuration) or restore those values")
        problem = finished_record_problem(previous)
        if problem:
            raise ConfigError(f"{run_dir}/run.json {problem}; it is not a result: move that directory away and "
                              f"run again (a divergence is then recorded diverged)")
        if previous.get("status") in FINAL_STATUSES:
            if resume == "auto":
                return RunPlan(previous, None, None, already_done=True)
            raise ConfigError(f"{run_dir} holds a {previous['status']} run; it is never overwritten: "
                              f"choose another hydra.run.dir (or resume=auto to report it)")
        if resume == "never":
            raise ConfigError(f"{run_dir} holds an unfinished run (status {previous.get('status')}); "
                              f"use resume=auto to continue it or choose another hydra.run.dir")
    left = _run_files(run_dir) if previous is None else []
    if resume == "never":
        if left:  # run.json moved away or lost: its checkpoints and metrics are still a run's
            raise ConfigError(f"{run_dir} holds {' and '.join(left)} but no run.json (a run whose record was moved "
                              f"away or lost); resume=never would overwrite them: "
                              + ("use resume=auto to continue it, or " if left != [METRICS] else "move them away or ")
                              + "choose another hydra.run.dir")
        return RunPlan(previous, None, None)
    if resume == "auto":
        found = ckpt_io.load_latest(run_dir)
        started = (previous or {}).get("resumed_from") or {}
        if found is None and isinstance(started.get("path"), str):
            # started here from another directory's checkpoint, stopped before its first own: continue
            # from that one again, as its relaunch would (helper-93: a fresh start from step 0 kept
            # the record's resumed_from)
            if not Path(started["path"]).is_file():
                raise ConfigError(f"{run_dir} holds a run started from the checkpoint {started['path']}, which no "
                                  f"longer exists, and no checkpoint of its own: restore that file, or choose "
                                  f"another hydra.run.dir for a new run")
            return plan_run(run_dir, started["path"], config,
                            said=f"resume=auto (the run in {run_dir} was started from {started['path']})")
        if found is None:
            if left:  # a record moved away, and no checkpoint to continue from: starting afresh cut its lines
                raise ConfigError(f"{run_dir} holds {' and '.join(left)} but no run.json and no checkpoint (a "
                                  f"run whose record was moved away or lost): there is nothing to continue it from, "
                                  f"and a new run would overwrite them; move them away or choose another "
                                  f"hydra.run.dir")
            return RunPlan(previous, None, None)
        # also when run.json is gone (moved away by hand)
        ckpt = _checkpoint_of(config, found[0], f"{run_dir} holds a checkpoint whose run",
                              "choose another hydra.run.dir or restore those values")
        return RunPlan(previous, ckpt, found[1])
    path = Path(resume)
    if path.is_dir():
        raise ConfigError(f"resume={resume} is a directory; pass its checkpoint file ({path / ckpt_io.LATEST}), or "
                          f"resume=auto with that directory as hydra.run.dir")
    if not path.is_file():
        raise ConfigError(f"resume={resume!r}: no such checkpoint file; use auto, never or a checkpoint path")
    own = {(Path(run_dir) / name).resolve() for name in (ckpt_io.LATEST, ckpt_io.PREVIOUS)}
    held = left if previous is None else ["run.json"] + _run_files(run_dir)
    started_from = (previous or {}).get("resumed_from") or {}
    if path.resolve() not in own and previous is not None and started_from.get("path") == str(path.resolve()):
        # the relaunch (a requeue) of the command that started this directory's run from that checkpoint
        found = ckpt_io.load_latest(run_dir)
        if found is not None:
            ckpt = _checkpoint_of(config, found[0], f"{run_dir} holds a checkpoint whose run",
                                  "choose another hydra.run.dir or restore those values")
            return RunPlan(previous, ckpt, found[1],
                           note=f"note: {run_dir} holds the run started from {path} (at step "
                                f"{started_from.get('global_step')}); continuing it from its own checkpoint at step "
                                f"{(ckpt.get('position') or {}).get('global_step')}, as resume=auto would")
        # it stopped before its first checkpoint: start from that checkpoint again. Its metrics.jsonl
        # begins with the lines of the checkpoint's run (copied at its start), so the checkpoint's
        # line count cuts it back to exactly those (less what a recorded cut removed); where lines were
        # lost without a recorded cut (a run started by an older version) the count does not
        # describe the file: refused
        lost = previous.get("metrics_lines_lost")
        unplaced = isinstance(lost, (int, float)) and lost > 0 and not previous.get("metrics_cuts")
        held = _run_files(run_dir) if unplaced else []
    if path.resolve() not in own and held:
        # its metrics.jsonl would be cut to the other checkpoint's line count and continued: two runs mixed
        raise ConfigError(f"{said}: {run_dir} already holds {' and '.join(held)} of a run, which a checkpoint "
                          f"of another directory would overwrite and mix with; resume into an empty hydra.run.dir "
                          f"(or resume=auto to continue the run there)")
    try:
        loaded = ckpt_io.load(path)
    except ckpt_io.CheckpointError as exc:  # a file that is not a checkpoint: say what resume= takes
        raise ckpt_io.CheckpointError(f"{said}: {exc}; pass a checkpoint.pt (or checkpoint_prev.pt) that "
                                      f"train.py wrote, or resume=auto / resume=never") from None
    step_then = started_from.get("global_step") if path.resolve() not in own and previous is not None and \
        started_from.get("path") == str(path.resolve()) else None
    step_now = (loaded.get("position") or {}).get("global_step") if isinstance(loaded, dict) else None
    if step_then is not None and step_now != step_then:
        # the checkpoint file was overwritten since (its own run went on): continuing from it would
        # skip or repeat steps under lines copied from the old one (helper-94)
        raise ConfigError(f"{said}: {run_dir} holds the run started from that file at step {step_then}, and "
                          f"it now holds step {step_now} (its own run went on): resume into an empty hydra.run.dir, "
                          f"or restore the checkpoint of step {step_then}")
    ckpt = _checkpoint_of(config, loaded, f"{said}: the checkpoint's run",
                          "resume with the checkpoint's values, or start a new run (resume=never)",
                          unrecorded=f"{said}: the checkpoint records no configuration (written by an "
                                     f"older version), so it cannot be checked against this one; start fresh")
    return RunPlan(previous, ckpt, path)


class RunLock:
    """An exclusive flock on ``<run_dir>/.lock`` for the life of the process (the kernel drops it
    on any exit, kill -9 included). The file names the holder, for the refusal message."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = Path(run_dir) / LOCK
        self.enabled = enabled
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        if not self.enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # the directory, or its lock file (e.g. a folder named .lock)
            raise ConfigError(f"cannot create the run directory {self.path.parent} or its lock file {self.path} "
                              f"({exc.strerror}); choose a writable hydra.run.dir") from None
        holder = lock_or_holder(fd)
        if holder is not None:
            raise RunLocked(f"{self.path.parent} is in use by {holder} (a double submit, or a requeue "
                            f"racing a job that is still alive); wait for it to end or choose another "
                            f"hydra.run.dir")
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
