"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over the old one.

A run directory holds ``checkpoint.pt`` (the latest) and ``checkpoint_prev.pt`` (the one
before), so that a kill during any write leaves at least one loadable checkpoint.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from adarem.faults import maybe_crash
from adarem.fsync import fsync_dir

LATEST, PREVIOUS = "checkpoint.pt", "checkpoint_prev.pt"


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_writes = 0


def save_atomic(obj: dict, run_dir: Path) -> Path:
    global _writes
    _writes += 1
    run_dir = Path(run_dir)
    for stale in run_dir.glob(f".{LATEST}.tmp-*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    tmp = run_dir / f".{LATEST}.tmp-{os.getpid()}"
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    try:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            maybe_crash("checkpoint_write", _writes)
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
    except OSError:  # e.g. a full disk: leave no partial file behind, keep the previous checkpoints
        tmp.unlink(missing_ok=True)
        raise
    latest = run_dir / LATEST
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    os.replace(tmp, latest)
    fsync_dir(run_dir)
    return latest


def load_latest(run_dir: Path) -> tuple[dict, Path] | None:
    """The newest loadable checkpoint of ``run_dir``, or None if there is none at all.

    Raises CheckpointError when checkpoint files exist but none can be read.
    """
    candidates = [Path(run_dir) / name for name in (LATEST, PREVIOUS) if (Path(run_dir) / name).exists()]
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            found = load(path), path
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:  # the newer one is torn (a kill mid-write of a non-atomic copy, a disk error): said, not skipped
            logging.getLogger(__name__).warning(
                "%s; resuming from %s (step %s): the steps since are trained again", errors[0], path.name,
                (found[0].get("position") or {}).get("global_step"))
        return found
    raise CheckpointError("; ".join(errors) + "; delete the run directory or pass resume=never "
                          "with a new hydra.run.dir")


def load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickling errors, permissions...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict) or "model" not in obj or "position" not in obj:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this suite")
    return obj


def device_info(device, precision) -> dict:
    """The device type and precision a run trains with (checkpoint key ``device``)."""
    dtype = precision.autocast_dtype
    return {"type": torch.device(device).type, "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "none")}


def check_same_device(ckpt: dict, path, device, precision) -> None:
    """Refuse to continue a checkpoint on another device type or precision (a GPU bf16 run
    continued on CPU in fp32 is another run: other kernels, other rounding). A checkpoint of a
    version that did not record it passes (run.json's hardware is checked too)."""
    before = ckpt.get("device") if isinstance(ckpt, dict) else None
    if not isinstance(before, dict):
        return
    here = device_info(device, precision)
    if before.get("type") != here["type"] or before.get("amp") != here["amp"]:
        raise CheckpointError(f"the checkpoint {path} was trained on {before.get('type')} with trainer.amp "
                              f"{before.get('amp')}; this process would continue it on {here['type']} with "
                              f"{here['amp']}: resume it on a {before.get('type')} device with the same trainer.amp, "
                              f"or start a new run in another hydra.run.dir")


def rank_state(state) -> dict:
    """What differs between ranks: RNG streams and the running sums of the current epoch."""
    return {"rng": rng_state(), "progress": state.progress.state_dict()}


def training_checkpoint(model, optimizer, scheduler, scaler, state, metrics_lines: int, per_rank: list,
                        config: dict, data_identity: dict | None = None, oscillation: dict | None = None,
                        device: dict | None = None, provenance: dict | None = None,
                        segment: int | None = None) -> dict:
    """Everything needed to continue a run exactly where it stopped; ``per_rank`` holds every
    rank's ``rank_state``; ``config`` is the resolved configuration and ``data_identity`` the
    data it was trained on (resume=<path> checks both); ``oscillation`` the oscillation tracker's
    window in progress (``OscillationTracker.state_dict``; absent outside a window); ``device`` what
    it trained on (``device_info``: a resume on another device type or precision is refused);
    ``provenance`` the git, versions, hardware and world_size of the segment that wrote it and its
    run's mixed_provenance (``record.segment_provenance``), which a run continued from it in another
    directory records as its first segment; ``segment`` the index of the run.json segment that wrote
    it (``metrics_lines`` counts lines of that segment's file: record.lines_before_checkpoint)."""
    extra = {"oscillation": oscillation} if oscillation is not None else {}
    if segment is not None:
        extra["segment"] = segment
    if device is not None:
        extra["device"] = device
    if provenance is not None:
        extra["provenance"] = provenance
    return {**extra,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "position": {"epoch": state.epoch, "batch": state.batch, "global_step": state.global_step,
                     "phase": state.phase, "elapsed_train_s": state.elapsed_train_s, "final": state.final,
                     "corrupt_skipped": state.corrupt_skipped, "corrupt_exact": state.corrupt_exact},
        "metrics_lines": metrics_lines,
        "config": config,
        "data_identity": data_identity,
        "per_rank": per_rank,
    }


def restore(ckpt: dict, model, optimizer, scheduler, scaler, state, rank: int, world: int = 1) -> None:
    per_rank = ckpt.get("per_rank") if isinstance(ckpt, dict) else None
    if isinstance(per_rank, list) and len(per_rank) != world:
        # fewer ranks would drop the others' epoch sums and RNG streams; more would have none
        raise CheckpointError(f"the checkpoint was written by {len(per_rank)} process(es), this launch has {world}; "
                              f"resume with {len(per_rank)} process(es)")
    try:
        _restore(ckpt, model, optimizer, scheduler, scaler, state, rank)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # another model, a foreign dict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the checkpoint does not fit this run ({type(exc).__name__}: {first[:200]}); "
                              f"resume only from a checkpoint of the same model and optimizer") from None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # 8 and 8.0 are one schedule
    return type(a) is type(b) and a == b


def _horizon(d: dict) -> int:
    """A step after which a timm cosine or multistep schedule described by ``d`` no longer changes."""
    ends = [d.get("warmup_t", 0) or 0]
    if isinstance(d.get("t_initial"), (int, float)):
        cycles = d.get("cycle_limit", 1) or 1
        ends.append((d.get("warmup_t", 0) or 0) + d["t_initial"] * max(1, cycles) * max(1.0, d.get("cycle_mul", 1.0)) ** cycles)
    if isinstance(d.get("decay_t"), (list, tuple)) and d["decay_t"]:
        ends.append(max(d["decay_t"]))
    elif isinstance(d.get("decay_t"), (int, float)):  # StepLRScheduler: every decay_t steps, forever
        ends.append(10 * d["decay_t"])
    return int(min(max(ends), 10 ** 8)) + 2


def check_same_schedule(saved, scheduler) -> None:
    """A checkpoint's lr schedule against the one this code builds for the run's configuration.

    timm's schedulers hold no state that changes as a run steps: their state_dict is the schedule
    itself (lengths, warm-up, milestones, min lr). Loading it with timm's load_state_dict, a plain
    ``__dict__.update``, would silently continue a run stopped under another version of
    adarem/schedule.py on that version's schedule while its record claims this one's. So the
    checkpoint's schedule is never loaded: where its state differs from this one's (keys both hold;
    one only one side holds is another timm's), the lr both set at every step up to where they
    become constant is compared, and any difference is refused in one line. A same-code resume finds
    the states equal and computes nothing."""
    if not isinstance(saved, dict):
        raise CheckpointError("the checkpoint holds no lr schedule state; it was not written by this suite's train.py")
    built = scheduler.state_dict()
    differ = [k for k in built if k in saved and not _same(saved[k], built[k])]
    if not differ:
        return
    other = copy.copy(scheduler)
    other.__dict__.update({k: saved[k] for k in differ})
    first = None
    for t in range(max(_horizon(built), _horizon(other.__dict__))):
        try:
            theirs = other._get_lr(t)
        except Exception:  # noqa: BLE001 - a state this timm cannot even evaluate: another schedule
            first = t
            break
        ours = scheduler._get_lr(t)
        if len(theirs) != len(ours) or not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15)
                                               for x, y in zip(theirs, ours)):
            first = t
            break
    if first is None and not any(k.startswith("noise") for k in differ):  # noise is applied outside _get_lr
        return  # written differently, the same lr at every step (e.g. a cycle_decay with one cycle)
    where = "the lr noise differs" if first is None else f"first different lr after step {first}"
    shown = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {built[k]!r} here" for k in differ[:4])
    raise CheckpointError(f"the checkpoint's lr schedule differs from the one this code builds for its configuration "
                          f"({shown}{'; ...' if len(differ) > 4 else ''}; {where}): it "
                          f"was written by another version of adarem/schedule.py; finish it with that version, or "
                          f"start a new run (resume=never with a new hydra.run.dir)")


def _restore(ckpt: dict, model, optimizer, scheduler, scaler, state, rank: int) -> None:
    from adarem.engine import EpochProgress

    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    # the schedule is the one this code builds for the configuration: a checkpoint's is compared, never loaded
    check_same_schedule(ckpt["scheduler"], scheduler)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    pos = ckpt["position"]
    state.epoch, state.batch, state.global_step = pos["epoch"], pos["batch"], pos["global_step"]
    state.phase, state.elapsed_train_s = pos["phase"], pos["elapsed_train_s"]
    state.final = dict(pos.get("final") or {})
    # absent from checkpoints written before the count was kept: what came before is unknown
    state.corrupt_skipped = int(pos.get("corrupt_skipped", 0))
    state.corrupt_exact = bool(pos.get("corrupt_exact", "corrupt_skipped" in pos))
    per_rank = ckpt["per_rank"]
    if rank >= len(per_rank):
        raise CheckpointError(f"checkpoint was written by {len(per_rank)} ranks, this is rank {rank}; "
                              f"resume with the same number of processes")
    state.progress = EpochProgress(**per_rank[rank]["progress"])
    set_rng_state(per_rank[rank]["rng"])
