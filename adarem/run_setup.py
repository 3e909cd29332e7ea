"""Everything a training run is made of, built in the order that keeps bad input harmless.

``create`` validates the config and joins the process group; ``prepare`` locks the run directory, decides what
to do with it (``adarem/run/plan.py``), and only then builds data, model, optimizer and scheduler,
restores a checkpoint and opens the run record. Everything that can fail on bad input fails
before anything is written. ``Run`` holds the pieces as explicit state (no globals): the training
loop (``adarem/trainer.py``) reads them, and ``Run.mark_failed`` / ``Run.close`` end a run
however it ends.

The data (torchvision), model and schedule (timm) and optimizer (torch._dynamo) modules are
imported by ``prepare`` when it builds them, not with this module: a launch refused before that
point (another configuration in the run directory, a bad checkpoint or run.json, resume=never on a
finished run) pays for importing torch and Hydra only (~2.5 s of the ~7 s of all of them, on 2 CPU
cores).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig

from adarem.run import checkpoint as ckpt_io
from adarem import distributed as dist_utils
from adarem import faults
from adarem.config import Config, ConfigError, to_container, validate
from adarem.distributed import DistInfo
from adarem.engine import Precision, TrainState, make_precision
from adarem.oscillation import OscillationTracker
from adarem.reproducibility import seed_everything
from adarem.run.plan import RunLock, RunLocked, RunPlan, plan_run
from adarem.run.identity import normalise_root, run_id
from adarem.run.peer_watch import PeerWatch
from adarem.run.record import (FINAL_STATUSES, METRICS, MetricsLog, RunRecord, checkpoint_start, describe_differences,
                               lines_before_checkpoint, lost_before_checkpoint, now, read_run_json,
                               trained_at_other_world)
from adarem.run.signals import REQUEUE_EXIT_CODE, StopFlag
from adarem.tracking import Tracker

if TYPE_CHECKING:
    from adarem.data import DataBundle

log = logging.getLogger("train")


@dataclass
class Run:
    config: Config
    config_dict: dict
    dist: DistInfo
    run_dir: Path
    lock: Optional[RunLock] = None
    plan: Optional[RunPlan] = None
    data: Optional[DataBundle] = None
    precision: Optional[Precision] = None
    model: Optional[torch.nn.Module] = None  # the bare module (evaluation, checkpoints)
    train_model: Optional[torch.nn.Module] = None  # DDP- and/or compile-wrapped, for training
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Any = None
    state: TrainState = field(default_factory=TrainState)
    record: Optional[RunRecord] = None
    metrics: Optional[MetricsLog] = None
    tracker: Optional[Tracker] = None
    oscillation: Optional[OscillationTracker] = None  # trainer.oscillation_every > 0
    bn_batch: Optional[int] = None  # images per BatchNorm batch in training (None: no BatchNorm)
    started: float = field(default_factory=time.time)  # this process's start (a rank's error file is newer)
    locked: bool = False  # the run directory is this job's (rank 0 holds its lock for every rank)
    watch: Optional[PeerWatch] = None  # DDP: ends this rank when another is lost (trainer.peer_timeout_s)
    log_before: bool = False  # the run directory's train.log held lines of an earlier launch when this one began

    def mark_failed(self, exc: BaseException, message: str) -> None:
        """run.json says how the run ended when it ended by an exception (Ctrl-C included). Under
        DDP every failing rank leaves its reason in ``rank<r>_error.txt`` before it exits; when
        rank 0, the only writer of run.json, then fails in its next collective ("connection closed
        by peer") it records the first rank's reason, and any rank that lost its peers names the
        first one's (``lost_peer``)."""
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {message}"
        if self.watch is not None:  # the other ranks learn of it, even where a collective would not tell them
            self.watch.end(failed=True, cause=None if isinstance(exc, dist_utils.PeerLost) else error)
        try:
            first = first_rank_error(self.run_dir, self.started) if self.dist.is_main else None
            # every rank's, rank 0's too and during set-up as well (before the record starts): the
            # ranks that lose their peers name it. Only into a directory this job holds: never
            # beside another job's live run (a second launch refused by the lock)
            if self.dist.enabled and self.locked and self.run_dir.is_dir():
                self.write_rank_error(self.dist.rank, error)
            if not self.dist.is_main or self.record is None:
                return
            if first and isinstance(exc, dist_utils.PeerLost):
                error = f"{first} (rank 0 then stopped with it)"
            elif first:
                error = f"{first} (rank 0 then: {error})"
            with self.record.lock:  # the main thread and the peer watch's: the first ending is recorded
                if self.record.data.get("status") == "running":
                    self.record.update(status=status, end_time=now(), error=error)
        except OSError:  # the disk that failed the run may fail this write too
            pass

    def lost_peer(self, exc: BaseException) -> Optional[dist_utils.PeerLost]:
        """The one line for ``exc`` when it is a collective that failed because another rank
        ended (naming that rank's error, from its error file), else None."""
        if not self.dist.enabled:
            return None
        return dist_utils.lost_peer_error(exc, self.dist.rank, first_rank_error(self.run_dir, self.started))

    def write_rank_error(self, rank: int, error: str) -> None:
        """``rank<rank>_error.txt``, whole or not at all (``first_rank_error`` reads them). Its temporary
        file is named by the writer as well: another rank may write the same rank's file."""
        tmp = self.run_dir / f".rank{rank}_error.txt.tmp{self.dist.rank}"
        tmp.write_text(error)
        os.replace(tmp, self.run_dir / f"rank{rank}_error.txt")

    def end_for_lost_peer(self, line: str, first: str) -> None:
        """The peer watch's ending of this rank (its main thread is held in a collective that waits
        for a lost rank), for ``first`` ("rank r: <cause>"): record it as a PeerLost and say it in
        one line; the watch then exits. A cause the watch found (a rank's silence: that rank wrote
        nothing) goes into that rank's error file, where the ranks that outlive the store look."""
        rank, _, cause = first.partition(": ")
        lost = int(rank.split()[-1]) if rank.startswith("rank ") and rank.split()[-1].isdigit() else None
        if self.locked and lost is not None and lost != self.dist.rank and \
                not (self.run_dir / f"rank{lost}_error.txt").exists():
            try:
                self.write_rank_error(lost, f"{cause} (found by rank {self.dist.rank}'s peer watch)")
            except OSError:
                pass
        self.mark_failed(dist_utils.PeerLost(line), line)
        print(f"error: {line}", file=sys.stderr, flush=True)
        # the loaders' workers too (bounded: nothing may keep this rank from ending): the idle ones
        # as close() would, then any still running (the training loader's, held by the generator
        # of the epoch the main thread is in), which would otherwise hold the run directory's lock
        # until they notice that this process has gone
        closer = threading.Thread(target=self.close_loaders, name="adarem-close-loaders", daemon=True)
        closer.start()
        closer.join(10)
        for child in multiprocessing.active_children():
            child.terminate()

    def close(self) -> None:
        """End what the run holds open, however it ended: the peer watch (after a normal end rank 0
        waits a moment for the others, so that none mistakes its store's end for a lost rank 0);
        the loaders' kept workers (DataLoader processes, DALI pipelines and their worker pools;
        without this they ended only when the loaders were collected: at exit, or in compare.py's
        worker processes, which run one trial after another, when a failed trial's traceback
        was); then the run-directory lock."""
        try:
            if self.watch is not None:
                self.watch.end()
            self.close_loaders()
        finally:
            if self.record is None:
                self.drop_empty_run_dir()
            if self.lock is not None:
                self.lock.release()

    def drop_empty_run_dir(self) -> None:
        """A launch refused (or stopped) before its run record was opened leaves nothing of a run:
        the directory it was given then holds only Hydra's train.log and the lock, a folder that
        looks like a run to whoever lists the runs. Remove it, while still locked, where that is
        all it holds (the error went to stderr), and its train.log began this launch empty (lines of
        earlier launches are kept). One process only (other ranks log into the same folder); never
        the directory the launch was started in."""
        if self.dist.enabled or not self.locked or self.log_before or not self.run_dir.is_dir():
            return
        names = {p.name for p in self.run_dir.iterdir()}
        if not names <= {"train.log", ".lock"} or self.run_dir.resolve() == Path.cwd().resolve():
            return
        try:
            for name in names:
                (self.run_dir / name).unlink()
            self.run_dir.rmdir()
        except OSError:  # another process wrote into it meanwhile, or a read-only folder: left as it is
            pass

    def close_loaders(self) -> None:
        for loader in (self.data.train, self.data.val) if self.data is not None else ():
            close = getattr(loader, "close", None)  # the synthetic loader has no workers
            if close is not None:
                close()


def other_code_note(previous: dict) -> str:
    """For a finished run reported again: where it was trained with other code than this launch's
    (another commit, or uncommitted changes on either side), what it was trained at, so that its
    result is not taken for this code's; "" where the code is the same or unrecorded."""
    from adarem.run.code_version import same_code
    from adarem.run.record import git_info

    then = previous.get("git") if isinstance(previous.get("git"), dict) else {}
    now = git_info()
    if not then.get("commit") or not now.get("commit") or same_code(then, now):
        return ""
    spelled = lambda g: f"{str(g['commit'])[:10]}{' with uncommitted changes' if g.get('dirty') else ''}"  # noqa: E731
    return (f"; note: it was trained at {spelled(then)}, this code is {spelled(now)}: move the run directory "
            f"away (or choose another hydra.run.dir) to train it with this code")


def first_rank_error(run_dir: Path, since: float) -> Optional[str]:
    """"rank r: <error>" of the rank whose error file (written since ``since``) came first, of the
    ranks that failed on their own: a rank that only lost its peers (PeerLost) is never the cause,
    however early its file (with 3+ ranks, a victim of a killed rank often writes first)."""
    found = []
    for path in run_dir.glob("rank*_error.txt"):
        try:
            mtime = path.stat().st_mtime_ns
            rank = int(path.name[4:-len("_error.txt")])
            error = path.read_text().strip()
        except (OSError, ValueError):
            continue
        if mtime >= since * 1e9 and not error.startswith(f"{dist_utils.PeerLost.__name__}:"):
            found.append((mtime, rank, error))
    if not found:
        return None
    _, rank, error = min(found)
    return f"rank {rank}: {error}"


def lock_run_dir(run: Run) -> None:
    """One process per run directory: rank 0 holds the lock for all ranks and tells them."""
    run.lock = RunLock(run.run_dir, run.dist.is_main)
    refusal = None
    try:
        run.lock.acquire()
    except ConfigError as exc:  # RunLocked (compare.py tells it apart), or a directory that cannot be made
        refusal = (isinstance(exc, RunLocked), str(exc))
    refusal = dist_utils.broadcast_object(refusal)
    if refusal:
        raise (RunLocked if refusal[0] else ConfigError)(refusal[1])
    run.locked = True


def launch_dir() -> Optional[str]:
    """The directory train.py was launched from, where Hydra has moved the process into the run
    directory (hydra.job.chdir=true): a relative data.root means a folder of the launch, as in the
    run id Hydra resolved before the move (it was read from the run directory instead, and the
    launch refused as "not a directory"). None otherwise (the working directory is the launch's)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not HydraConfig.get().job.chdir:
        return None
    from hydra.utils import get_original_cwd

    return get_original_cwd()


def create(cfg: DictConfig, stop: StopFlag) -> Run:
    """Validate the config and join the process group: the run exists, nothing is built yet."""
    spelled = cfg.data.root
    cfg.data.root = normalise_root(spelled, launch_dir())  # recorded (run.json, checkpoints) as the run id sees it
    config = validate(cfg)
    dist = dist_utils.init_distributed(config.trainer.device, config.trainer.start_timeout_s,
                                       lambda: stop.signal_name is not None)
    stop.distributed, stop.device = dist.enabled, dist.device
    seed_everything(config.seed, config.trainer.deterministic, dist.rank)
    run = Run(config, to_container(cfg), dist, Path(config.run_dir))
    log = run.run_dir / "train.log"  # Hydra's, opened (and appended to) before this; nothing logged yet
    run.log_before = log.is_file() and log.stat().st_size > 0
    if dist.enabled and config.trainer.peer_timeout_s > 0:
        run.watch = PeerWatch.for_job(dist.rank, dist.world_size, config.trainer.peer_timeout_s, run.end_for_lost_peer,
                                      lambda: first_rank_error(run.run_dir, run.started))
    if spelled != cfg.data.root and dist.is_main:
        note_run_of_the_old_spelling(run, spelled)
    return run


def note_run_of_the_old_spelling(run: Run, spelled: str) -> None:
    """Before data.root was normalised, this spelling hashed to another run id: a run stopped (or
    finished) then sits in the directory of the old id, which this launch would not find. Say so,
    rather than train again beside it in silence."""
    new_id = run_id(run.config_dict)
    old_id = run_id({**run.config_dict, "data": {**run.config_dict["data"], "root": spelled}}, normalise=False)
    if new_id not in run.run_dir.name or (run.run_dir / "run.json").exists():
        return
    old_dir = run.run_dir.with_name(run.run_dir.name.replace(new_id, old_id))
    if (old_dir / "run.json").exists():
        print(f"note: {old_dir} holds a run of this configuration recorded with data.root={spelled} before data.root "
              f"was normalised; to continue or report it instead, pass hydra.run.dir={old_dir}", file=sys.stderr,
              flush=True)


def prepare(run: Run, stop: StopFlag) -> Optional[int]:
    """Build the run in place. Returns an exit code when there is nothing to train, else None."""
    config, dist, tc = run.config, run.dist, run.config.trainer
    lock_run_dir(run)
    run.plan = plan_run(run.run_dir, config.resume, run.config_dict)
    if dist.enabled:
        check_same_start(dist_utils.all_gather_object(start_of(run.plan)))
    if run.plan.note and dist.is_main:
        print(run.plan.note, file=sys.stderr, flush=True)
    before = ((run.plan.previous or {}).get("hardware") or {}).get("device", "")
    if before and before.split(":")[0] != dist.device.type:
        # trainer.amp=auto (bf16 on GPU, fp32 on CPU) and the kernels differ: another run
        raise ConfigError(f"{run.run_dir} holds a run on {before.split(':')[0]}, this process is on "
                          f"{dist.device.type}; use a separate hydra.run.dir per device type")
    run.precision = make_precision(tc.amp, dist.device)
    if run.plan.checkpoint is not None:  # also without a run.json (resume=<path>, a record moved away)
        ckpt_io.check_same_device(run.plan.checkpoint, run.plan.checkpoint_path, dist.device, run.precision)
    from adarem.data import build_data, data_identity  # here, not at import (the module docstring says why)
    from adarem.models import build_model, check_input_fits, to_sync_batchnorm
    from adarem.optim.factory import build_optimizer, fused_cpu_kernel_missing, optimizer_impl
    from adarem.schedule import build_scheduler

    run.data = build_data(config.data, tc.batch_size, dist.rank, dist.world_size, config.seed, dist.device,
                          channels_last=tc.channels_last, half=run.precision.autocast_dtype == torch.float16)
    data_id = data_identity(config.data, run.data)
    if dist.enabled:  # before the record's check, which one rank alone could fail
        check_same_data(dist_utils.all_gather_object(data_id))
    check_data_identity(run, data_id)  # also for a finished run: its result is this data's only if it matches
    if tc.evals_per_epoch > len(run.data.train):  # before anything is recorded: evaluation points would coincide
        raise ConfigError(f"trainer.evals_per_epoch={tc.evals_per_epoch} exceeds the {len(run.data.train)} steps of "
                          f"an epoch; use at most {len(run.data.train)}")
    if run.plan.already_done:
        check_finished_world_size(run)
        if dist.is_main:
            prev = run.plan.previous
            err = (prev.get("final") or {}).get("val_top1_err")
            print(f"{run.run_dir}: run already {prev['status']}"
                  + (f"; final top-1 error {err:.2f}%" if err is not None else "") + " (nothing to do)"
                  + other_code_note(prev))
        return 0

    if dist.device.type == "cuda":
        # TF32 tensor cores for fp32 matmuls and convolutions (what trainer.amp=none runs in; bf16
        # and fp16 autocast are unaffected), as NVIDIA's recipes do; recorded in run.json
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run.model = build_model(config.model.name, run.data.num_classes, run.data.in_chans, config.model.pretrained,
                            config.model.drop_rate, config.model.kwargs)
    check_input_fits(run.model, config.model.name, run.data.in_chans, config.data.image_size, run.data.num_classes,
                     config.model.kwargs)  # before anything is recorded
    run.model = run.model.to(dist.device)
    run.bn_batch = bn_batch(run.model, tc.batch_size, dist.world_size, tc.sync_bn)
    check_bn_batch(run, dist.device.type)
    if tc.sync_bn and dist.enabled and run.bn_batch is not None:
        run.model = to_sync_batchnorm(run.model)  # before DDP and the optimizer
    if tc.channels_last:
        run.model = run.model.to(memory_format=torch.channels_last)
    run.optimizer = build_optimizer(config.optimizer, run.model, total_steps=tc.epochs * len(run.data.train))
    run.scheduler = build_scheduler(config.schedule, run.optimizer, tc.epochs, len(run.data.train))
    if run.plan.checkpoint is not None:
        ckpt_io.restore(run.plan.checkpoint, run.model, run.optimizer, run.scheduler, run.precision.scaler,
                        run.state, dist.rank, dist.world_size)
    if tc.oscillation_every:
        # a window the checkpoint fell into continues (its record equals an uninterrupted run's)
        run.oscillation = OscillationTracker(run.model, tc.oscillation_every)
        try:
            run.oscillation.load_state_dict((run.plan.checkpoint or {}).get("oscillation"))
        except ValueError as exc:
            raise ckpt_io.CheckpointError(f"{run.plan.checkpoint_path}: {exc}") from None
    check_same_optimizer_path(dist_utils.all_gather_object(
        (optimizer_impl(run.optimizer), fused_cpu_kernel_missing(run.optimizer))))
    # an epoch whose training ended but whose evaluation did not (preempted at its last step or
    # during its evaluation) is evaluated first, whatever the limit
    epoch_end_pending = run.state.phase == "eval" or run.state.batch >= len(run.data.train)
    if tc.max_steps and run.state.global_step >= tc.max_steps and not epoch_end_pending:
        # stopped there before (exit 0), or preempted at that very step by an older version (exit
        # 75, requeued): a relaunch at the same limit trains nothing more, and the run is what it
        # would have been without the signal: stopped at its limit
        previous = run.plan.previous or {}
        limit_then = ((previous.get("config") or {}).get("trainer") or {}).get("max_steps")
        if dist.is_main and previous.get("status") == "preempted" and \
                previous.get("stopped_at_step") == run.state.global_step == tc.max_steps == limit_then:
            # only a preemption at the very step of the limit it ran under; one that had steps left
            # (no limit then, or a higher one) stays a preemption whatever limit is given now
            record = RunRecord(run.run_dir, True)
            record.data = dict(previous)
            record.update(status="stopped", stop_reason="max_steps")
        if dist.is_main:
            print(f"{run.run_dir}: stopped at step {run.state.global_step}, at trainer.max_steps={tc.max_steps}; "
                  f"nothing to train (raise or drop trainer.max_steps to continue it)", file=sys.stderr)
        return 0
    faults.maybe_crash("start", 0)  # tests: a preemption notice just before the first step
    if stop.requested_anywhere():  # preempted while starting (agreed by all ranks): nothing to save yet
        previous = run.plan.previous or {}
        if dist.is_main and previous and previous.get("status") not in FINAL_STATUSES:
            # a relaunch of a run whose last segment died ("running": kill -9, a node lost): under
            # torchrun, which exits 1 for the workers' 75, the record's status is what a requeue
            # rule reads (helper-93: it stayed "running", and the run was never requeued)
            record = RunRecord(run.run_dir, True)
            record.data = dict(previous)
            # the segment that died keeps its own end ("running": killed), not this launch's
            # preemption, which trained nothing and records no segment (helper-94)
            segments = [dict(x) for x in previous.get("segments") or [] if isinstance(x, dict)]
            if segments:
                segments[-1].setdefault("end_status", previous.get("status"))
            record.update(status="preempted", end_time=now(), signal=stop.recorded_signal,
                          stopped_at_step=run.state.global_step, stop_reason="preempt",
                          **({"segments": segments} if segments else {}))
        if dist.is_main:
            print(f"stopped during start-up (signal {stop.recorded_signal}) before any training step; exit "
                  f"{REQUEUE_EXIT_CODE} asks for a requeue", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    run.train_model = run.model
    if dist.enabled:
        # gradients as views into the all-reduce buckets: no copy in and out of them each step
        run.train_model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    if tc.compile:
        run.train_model = torch.compile(run.train_model)
    open_record(run, data_id)
    return None


def check_same_optimizer_path(paths: list[tuple[str, Optional[str]]]) -> None:
    """``paths``: (optimizer path, why the fused CPU kernel is missing or None) of every rank.

    Every rank must be able to step, and with the same implementation: paths round differently,
    and DDP does not re-synchronise weights, so replicas would drift apart. impl=auto decides per
    rank, and a checkpoint restores the path a run started with (AdaRem's CPU kernel, say, may
    build on one node and not on another). Refused here on every rank at once, not by one rank's
    exception at its first step while the others wait in a collective."""
    for rank, (_, why) in enumerate(paths):
        if why is not None:
            raise ConfigError(f"rank {rank} cannot run AdaRem's fused CPU kernel, which this run steps with "
                              f"(chosen at its start or restored from its checkpoint): {why}; install a C++ "
                              f"compiler and ninja there")
    impls = [impl for impl, _ in paths]
    if len(set(impls)) > 1:
        ranks = ", ".join(f"rank {r}: {impl}" for r, impl in enumerate(impls))
        raise ConfigError(f"the ranks chose different optimizer paths ({ranks}); set optimizer.impl "
                          f"explicitly (e.g. optimizer.impl=foreach) or make the same path available on every node")


def bn_batch(model: torch.nn.Module, batch_size: int, world_size: int, sync_bn: bool) -> Optional[int]:
    """Images each BatchNorm layer normalises over in a training step: the rank's share of the
    global batch, or the global batch with SyncBatchNorm; None for a model without BatchNorm."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    return batch_size if sync_bn or world_size == 1 else batch_size // world_size


def check_bn_batch(run: Run, device_type: str) -> None:
    """SyncBatchNorm needs CUDA, and changes something only for a model with BatchNorm on several
    ranks: elsewhere trainer.sync_bn=true trained the same run as without it, in a directory and a
    table setting of its own (helper-92). (A run is never continued at another world size, which
    would change the BatchNorm batch: the checkpoint restore refuses that.)"""
    tc, dist = run.config.trainer, run.dist
    if tc.sync_bn and (run.bn_batch is None or not dist.enabled):
        why = (f"model.name={run.config.model.name} has no BatchNorm layer" if run.bn_batch is None else
               f"one process already normalises over the whole batch of {tc.batch_size}")
        raise ConfigError(f"trainer.sync_bn=true changes nothing here ({why}): drop it; it is for a BatchNorm model "
                          f"on several GPUs")
    if tc.sync_bn and dist.enabled and device_type != "cuda" and run.bn_batch is not None:
        raise ConfigError(f"trainer.sync_bn=true needs CUDA (SyncBatchNorm); these {dist.world_size} ranks are on "
                          f"{device_type}: drop it (each rank then normalises over its {tc.batch_size // dist.world_size} "
                          f"images) or run on GPUs")


def check_finished_world_size(run: Run) -> None:
    """A finished run is this launch's result only at the world size it was trained at (BatchNorm's
    batch, each rank's dropout masks, the order of the gradient sums): otherwise refused, instead of
    reporting (or handing compare) the result of another launch. It was refused only where the model
    had BatchNorm; a model without it was reported as this launch's result."""
    previous, world = run.plan.previous or {}, run.dist.world_size
    if not trained_at_other_world(previous, world):
        return
    before = previous["world_size"]
    bn = previous.get("bn_batch", "unrecorded")
    raise ConfigError(f"{run.run_dir} holds a {previous.get('status')} run trained on {before} rank(s)"
                      + (f" (BatchNorm batch {bn})" if bn is not None else "") + f"; this launch has {world}, which "
                      f"changes its result (BatchNorm's batch, each rank's dropout masks, the order of the gradient "
                      f"sums): relaunch with {before}, or choose another hydra.run.dir for a new run")


# what a differing data_identity key means, for the refusal (the hashes alone say little)
_DATA_KEY_MEANING = {
    "train_sha1": "hash of the training images' paths and classes", "val_sha1": "hash of the evaluated images' "
    "paths and classes", "train_images": "training images", "val_images": "evaluated images",
    "train_samples": "training samples per epoch", "val_samples": "evaluated samples",
    "classes_sha1": "hash of the class names", "num_classes": "classes",
}


def start_of(plan: RunPlan) -> tuple:
    """Where a rank's run begins, from what its run directory holds: the status of its run.json,
    and the step and file of the checkpoint it continues (None: from the start)."""
    pos = (plan.checkpoint or {}).get("position") or {} if isinstance(plan.checkpoint, dict) else {}
    return ((plan.previous or {}).get("status"), pos.get("global_step"),
            str(plan.checkpoint_path) if plan.checkpoint_path is not None else None)


def check_same_start(starts: list[tuple]) -> None:
    """Every rank begins where rank 0 does. A run directory that is not one shared folder (runs/
    relative to a node-local working directory, where only rank 0 ever wrote) had rank 0 resume at
    its checkpoint's step and another rank start afresh: the ranks then waited in different
    collectives (a silent hang), or trained from different states."""
    for rank, start in enumerate(starts):
        if start != starts[0]:
            def say(s):
                return (f"run.json {s[0] or 'absent'}, " + (f"checkpoint {s[2]} at step {s[1]}" if s[2] else "no checkpoint"))

            raise ConfigError(f"rank {rank} sees another run directory than rank 0 ({say(start)}; rank 0: "
                              f"{say(starts[0])}): every rank must read and write one shared hydra.run.dir; give an "
                              f"absolute path on a file system every node mounts")


def check_same_data(identities: list[dict]) -> None:
    """Every rank reads the data rank 0 does (the same images, in the same order): a node-local copy
    that is incomplete gave its ranks another sample list, so batches and the validation count
    were no longer the run's, with no word, and only rank 0's identity was recorded."""
    for rank, ident in enumerate(identities):
        # not the root as resolved (one data.root may link to each node's own copy): the contents
        differing = [k for k in sorted((set(ident) | set(identities[0])) - {"root"})
                     if ident.get(k) != identities[0].get(k)]
        if differing:
            diff = "; ".join(f"{k} {ident.get(k)!r} (rank 0: {identities[0].get(k)!r})" for k in differing)
            raise ConfigError(f"rank {rank} reads other data than rank 0 ({diff}): every rank must see the same "
                              f"data.root contents (a node-local copy that is incomplete or older?)")


def check_data_identity(run: Run, data_id: dict) -> None:
    """Refuse to continue or report a run that was trained on other data (same configuration and
    directory, but the dataset's contents changed: images added, removed, renamed or moved to
    another class); one line naming what differs."""
    previous = run.plan.previous or {}
    checkpoint = run.plan.checkpoint if isinstance(run.plan.checkpoint, dict) else {}
    # the run directory's record, and the checkpoint resumed from (resume=<path> may name one of
    # another directory); either may predate data identities (None: nothing to compare)
    for before, where in ((previous.get("data_identity"), f"{run.run_dir} holds a {previous.get('status', 'unknown')} "
                                                           f"run whose dataset"),
                          (checkpoint.get("data_identity"), f"the checkpoint {run.plan.checkpoint_path} was trained on "
                                                            f"a dataset that")):
        if not isinstance(before, dict):
            continue
        # Only the keys recorded by both are compared: a record written before a key was added to
        # the identity (train_images, val_images, train_sha1, val_sha1 came later) lacks it, and its
        # run, finished or stopped, is still continued or reported when the keys it has agree.
        differing = [k for k in sorted(set(before) & set(data_id)) if before[k] != data_id[k]]
        if not differing:
            continue
        named = {k: f"{k} ({_DATA_KEY_MEANING[k]})" if k in _DATA_KEY_MEANING else k for k in differing}
        diff = "; ".join(f"{named[k]} {before[k]!r} then, {data_id[k]!r} now" for k in differing)
        raise ConfigError(f"{where} differs from this one ({diff}); restore the dataset, or choose another "
                          f"hydra.run.dir for a new run")


def _source_cuts(source_dir: Path) -> tuple[list, bool]:
    """The metrics cuts recorded by the run a foreign checkpoint came from (its run.json), and
    whether it lost lines no recorded cut places (an older version's record)."""
    try:
        record = read_run_json(source_dir) or {}
    except ValueError:  # unreadable: nothing known of its cuts
        return [], False
    cuts = record.get("metrics_cuts") or []
    lost = record.get("metrics_lines_lost")
    return cuts, isinstance(lost, (int, float)) and lost > 0 and not cuts


def open_record(run: Run, data_id: dict) -> None:
    """run.json (rank 0 writes), metrics.jsonl cut back to the checkpoint, and the wandb mirror."""
    from adarem.models import count_parameters
    from adarem.optim.factory import optimizer_impl
    from adarem.schedule import truncation

    config, dist, data = run.config, run.dist, run.data
    # metrics.jsonl first: a run directory whose metrics.jsonl cannot be opened (a folder of that
    # name, no permission) is refused before run.json records a new segment (restarts + 1, failed)
    run.metrics = MetricsLog(run.run_dir, dist.is_main)
    foreign = run.plan.checkpoint is not None and run.plan.foreign(run.run_dir)
    source_cuts, source_unplaced = _source_cuts(Path(run.plan.checkpoint_path).parent) if foreign else ([], False)
    keep = 0 if run.plan.checkpoint is None else lines_before_checkpoint(
        run.plan.checkpoint, (run.plan.previous or {}).get("metrics_cuts") or [], foreign, source_cuts)
    mine = run.run_dir / METRICS
    fresh = foreign and (not mine.exists() or mine.stat().st_size == 0)  # its first start from that checkpoint
    if fresh and not source_unplaced:
        # resume=<path>: the lines logged before that checkpoint are in its run's directory; copied,
        # so that this run's curve is whole (helper-93: they were counted lost, and the tables left
        # the run out). Not from a run that lost lines where no recorded cut places them (an older
        # version's): its first lines are not those the count means
        run.metrics.copy_lines_from(Path(run.plan.checkpoint_path).parent / METRICS, keep)
    lost = run.metrics.open(keep_lines=keep)
    if fresh and dist.is_main:
        # what the source had lost before the checkpoint (its cuts up to the checkpoint's segment)
        # is lost here too, as are the counted lines not copied (helper-94)
        lost = (run.plan.checkpoint["metrics_lines"] - run.metrics.lines
                + lost_before_checkpoint(run.plan.checkpoint, source_cuts))
    run.record = RunRecord(run.run_dir, dist.is_main)
    plan = run.plan
    changed = run.record.start(run.config_dict, dist.world_size, dist.device, plan.previous,
                               start_step=run.state.global_step,
                               checkpoint=None if plan.checkpoint is None else checkpoint_start(
                                   plan.checkpoint, plan.checkpoint_path, plan.foreign(run.run_dir)))
    if changed == ["unrecorded"] and dist.is_main:
        print(f"note: {run.run_dir} continues at step {run.state.global_step} from the checkpoint {plan.checkpoint_path}, "
              f"which records no provenance (an older version's): the code, versions and hardware it was trained on are "
              f"unknown; run.json says so (mixed_provenance: unrecorded)", file=sys.stderr)
    elif changed and dist.is_main:
        before, now_ = run.record.data["segments"][-2:]
        print(f"note: {run.run_dir} continues at step {run.state.global_step} with other code, versions or threads than "
              f"its previous segment ({describe_differences(before, now_, changed)}); its numbers may differ from an "
              f"uninterrupted run's; run.json lists every segment (segments, mixed_provenance)", file=sys.stderr)
    run.record.update(run_id=run_id(run.config_dict), data_identity=data_id, n_params=count_parameters(run.model),
                      optimizer_impl=optimizer_impl(run.optimizer), tf32=dist.device.type == "cuda",
                      amp=run.precision.name,
                      per_rank_batch=config.trainer.batch_size // dist.world_size, bn_batch=run.bn_batch,
                      **({"adarem_decay": run.optimizer.defaults["decay"]} if config.optimizer.name == "adarem" else {}),
                      steps_per_epoch=len(data.train), train_samples_per_epoch=data.train.num_samples,
                      # a smoke run of a longer recipe says so where the tables read it, not only on stderr
                      schedule_truncated=truncation(config.schedule, config.trainer.epochs),
                      val_samples=data.val.num_samples)
    if lost and dist.is_main:
        where = (f"{Path(run.plan.checkpoint_path).parent / METRICS}, the checkpoint's run's," if foreign else
                 str(run.run_dir / METRICS))
        print(f"warning: {where} held {lost} fewer complete line(s) than the checkpoint recorded (cut, torn or "
              f"absent); those lines are lost and the run record says so (metrics_lines_lost)", file=sys.stderr)
        # the checkpoints written before this segment count lines that are gone (lines_before_checkpoint)
        cut = {"segment": run.record.segment, "lines": run.metrics.lines, "lost": lost}
        run.record.update(metrics_lines_lost=run.record.data.get("metrics_lines_lost", 0) + lost,
                          metrics_cuts=[*(run.record.data.get("metrics_cuts") or []), cut])
    run.tracker = Tracker(config.logging.wandb, dist.is_main)
    variant = config.optimizer.variant
    wandb_id = run.record.data.setdefault("wandb_id", f"{variant}-s{config.seed}-{os.urandom(4).hex()}")
    run.record.write()
    run.tracker.start(run.run_dir, wandb_id, config.logging.project, config.logging.entity,
                      config.logging.group or f"{config.data.name}-{config.model.name}-{variant}",
                      f"{config.model.name}-{variant}-lr{config.optimizer.lr}-s{config.seed}", run.config_dict)
    if run.plan.checkpoint is not None and dist.is_main:
        log.info("resumed from %s at epoch %d, batch %d", run.plan.checkpoint_path, run.state.epoch, run.state.batch)
