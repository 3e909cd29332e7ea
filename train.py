"""Train a timm/torchvision model with SGD, Adam, AdamW or AdaRem; leave a run record behind.

    python train.py                                     # small CNN on the embedded digits, AdaRem
    python train.py optimizer=sgd data=fashion_mnist trainer.epochs=5
    torchrun --nproc-per-node=8 train.py experiment=paper_resnet50 optimizer=adarem seed=1

Configs live in configs/ (validated by adarem/config.py). The run directory gets run.json,
metrics.jsonl and checkpoints (format: README.md). resume=auto (the default) continues an
interrupted run; SIGTERM/SIGUSR1 checkpoint and exit with code 75 ("requeue me").
"""

from __future__ import annotations

import signal
import sys

# Before the heavy imports (seconds): a preemption signal that arrives while Python is still
# starting must end in "requeue me" (exit 75), not in the default death by signal (143/138).
_EARLY_SIGNAL: list[str] = []
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_sig, lambda signum, frame: _EARLY_SIGNAL.append(signal.Signals(signum).name))

import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra
import torch
from omegaconf import DictConfig

from adarem import checkpoint as ckpt_io
from adarem import distributed as dist_utils
from adarem.checkpoint import CheckpointError
from adarem.config import ConfigError, register_configs, to_container, validate
from adarem.data import DataError, build_data
from adarem.engine import TrainState, evaluate, make_precision, progress_bar, train_epoch
from adarem.faults import maybe_crash
from adarem.models import build_model, count_parameters
from adarem.optim.factory import build_optimizer
from adarem.oscillation import OscillationTracker
from adarem.reproducibility import seed_everything
from adarem.data import data_identity
from adarem.run_dir import RunLock, plan_run
from adarem.run_identity import run_id
from adarem.run_record import MetricsLog, RunRecord, now
from adarem.schedule import build_scheduler
from adarem.signals import REQUEUE_EXIT_CODE, StopFlag
from adarem.tracking import Tracker

log = logging.getLogger("train")
register_configs()
_ACTIVE_RECORD: list[RunRecord] = []  # so that a crash still marks run.json as failed
_RESOURCES: list[RunLock] = []  # released when train() ends, however it ends


def train(cfg: DictConfig) -> int:
    """Run (or continue) one training run; returns the exit code. The run-directory lock is
    released however it ends (compare.py calls this repeatedly in one process)."""
    try:
        return _train(cfg)
    finally:
        while _RESOURCES:
            _RESOURCES.pop().release()


def _train(cfg: DictConfig) -> int:
    stop = StopFlag()
    stop.install()  # first: a preemption during start-up must still end in "requeue me"
    if _EARLY_SIGNAL:
        stop.signal_name = _EARLY_SIGNAL[0]
    config = validate(cfg)
    config_dict = to_container(cfg)
    tc = config.trainer
    dist = dist_utils.init_distributed(tc.device)
    stop.distributed, stop.device = dist.enabled, dist.device
    seed_everything(config.seed, tc.deterministic)
    run_dir = Path(config.run_dir)

    # One process per run directory (rank 0 holds the lock for all ranks), then everything that
    # can fail on bad input is checked before anything is written.
    lock = RunLock(run_dir, dist.is_main)
    _RESOURCES.append(lock)
    refusal = None
    try:
        lock.acquire()
    except ConfigError as exc:
        refusal = str(exc)
    refusal = dist_utils.broadcast_object(refusal)
    if refusal:
        raise ConfigError(refusal)
    plan = plan_run(run_dir, config.resume, config_dict)
    if plan.already_done:
        prev = plan.previous
        if dist.is_main:
            err = (prev.get("final") or {}).get("val_top1_err")
            print(f"{run_dir}: run already {prev['status']}"
                  + (f"; final top-1 error {err:.2f}%" if err is not None else "") + " (nothing to do)")
        return 0
    precision = make_precision(tc.amp, dist.device)
    data = build_data(config.data, tc.batch_size, dist.rank, dist.world_size, config.seed, dist.device,
                      channels_last=tc.channels_last, half=precision.autocast_dtype == torch.float16)
    data_id = data_identity(config.data, data)
    if plan.previous and plan.previous.get("data_identity") not in (None, data_id):
        raise ConfigError(f"the dataset differs from the one this run started with "
                          f"({plan.previous['data_identity']} then, {data_id} now); restore it or start a new run")
    model = build_model(config.model.name, data.num_classes, data.in_chans, config.model.pretrained,
                        config.model.drop_rate, config.model.kwargs).to(dist.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optimizer, model)
    scheduler = build_scheduler(config.schedule, optimizer, tc.epochs, len(data.train))
    state = TrainState()
    if plan.checkpoint is not None:
        ckpt_io.restore(plan.checkpoint, model, optimizer, scheduler, precision.scaler, state, dist.rank)
    if stop.requested_anywhere():  # preempted while starting (agreed by all ranks): nothing to save yet
        return _stopped_during_startup(stop, dist.is_main)
    train_model = model
    if dist.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    if tc.compile:
        train_model = torch.compile(train_model)

    # The run record: only rank 0 writes.
    record = RunRecord(run_dir, dist.is_main)
    _ACTIVE_RECORD.append(record)
    record.start(config_dict, dist.world_size, dist.device, plan.previous)
    record.update(run_id=run_id(config_dict), data_identity=data_id, n_params=count_parameters(model),
                  steps_per_epoch=len(data.train), train_samples_per_epoch=data.train.num_samples,
                  val_samples=data.val.num_samples)
    metrics = MetricsLog(run_dir, dist.is_main)
    lost = metrics.open(keep_lines=plan.checkpoint["metrics_lines"] if plan.checkpoint else 0)
    if lost and dist.is_main:
        print(f"warning: {run_dir / 'metrics.jsonl'} held {lost} fewer complete line(s) than the checkpoint "
              f"recorded (cut or torn); those lines are lost and the run record says so (metrics_lines_lost)",
              file=sys.stderr)
        record.update(metrics_lines_lost=record.data.get("metrics_lines_lost", 0) + lost)
    tracker = Tracker(config.logging.wandb, dist.is_main)
    wandb_id = record.data.setdefault("wandb_id", f"{config.optimizer.variant}-s{config.seed}-{os.urandom(4).hex()}")
    record.write()
    tracker.start(run_dir, wandb_id, config.logging.project, config.logging.entity,
                  config.logging.group or f"{config.data.name}-{config.model.name}-{config.optimizer.variant}",
                  f"{config.model.name}-{config.optimizer.variant}-lr{config.optimizer.lr}-s{config.seed}",
                  config_dict)
    if plan.checkpoint is not None and dist.is_main:
        log.info("resumed from %s at epoch %d, batch %d", plan.checkpoint_path, state.epoch, state.batch)

    def log_metrics(rec: dict) -> None:
        metrics.log(rec)
        tracker.log({k: v for k, v in rec.items() if k not in ("type", "per_layer")}, step=rec.get("step", state.global_step))
        if rec["type"] == "iter" and dist.is_main and bar is None and config.logging.progress != "none":
            log.info("epoch %d step %d loss %.4f lr %.4g", rec["epoch"], rec["step"], rec["loss"], rec["lr"])

    def save_checkpoint() -> None:
        per_rank = [ckpt_io.rank_state(state)]
        if dist.enabled:
            gathered = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, per_rank[0])
            per_rank = gathered
        if dist.is_main:
            metrics.flush()
            ckpt_io.save_atomic(ckpt_io.training_checkpoint(model, optimizer, scheduler, precision.scaler,
                                                            state, metrics.lines, per_rank, config_dict), run_dir)
        dist_utils.barrier()

    last_ckpt = [time.monotonic()]

    def checkpoint_due() -> bool:
        return tc.checkpoint_every_min > 0 and time.monotonic() - last_ckpt[0] > 60 * tc.checkpoint_every_min

    def stop_for_requeue(status: str) -> int:
        """After the checkpoint: record why the run stopped and ask the scheduler for a requeue."""
        metrics.close()
        record.update(status=status, stopped_at_step=state.global_step, signal=stop.signal_name)
        if dist.is_main:
            print(f"{status} at step {state.global_step} (signal {stop.signal_name}); checkpoint written, "
                  f"exit {REQUEUE_EXIT_CODE} asks for a requeue; rerun with resume=auto to continue",
                  file=sys.stderr)
        tracker.finish(exit_code=REQUEUE_EXIT_CODE)
        return REQUEUE_EXIT_CODE

    osc = OscillationTracker(model, tc.oscillation_every) if tc.oscillation_every else None
    bar = None
    while state.epoch < tc.epochs:
        if state.phase == "train":
            bar = progress_bar(len(data.train), state.batch, f"epoch {state.epoch}", config.logging.progress, dist.is_main)
            outcome = train_epoch(train_model, data.train, optimizer, scheduler, precision, dist.device, tc, state,
                                  stop, log_metrics, osc, checkpoint_due, bar)
            if bar is not None:
                bar.close()
                bar = None
            if outcome.reason == "diverged":
                div = outcome.divergence
                metrics.log({"type": "diverged", "epoch": state.epoch, "step": div.step, "loss": div.loss})
                metrics.close()
                record.update(status="diverged", end_time=now(), diverged_at_step=div.step,
                              final={"val_top1_err": None, "diverged_at_step": div.step})
                if dist.is_main:
                    print(f"DIVERGED: training loss {div.loss} at step {div.step} (epoch {state.epoch}); the run is "
                          f"marked diverged in {run_dir / 'run.json'} and its last good checkpoint is kept",
                          file=sys.stderr)
                tracker.finish()
                return 0
            if outcome.reason != "epoch_end":
                save_checkpoint()
                last_ckpt[0] = time.monotonic()
                if outcome.reason == "timed_checkpoint":
                    continue
                return stop_for_requeue("preempted" if outcome.reason == "preempt" else "stopped")
            state.elapsed_train_s += state.progress.train_time_s
            state.phase = "eval"
            save_checkpoint()  # a kill during evaluation does not lose the epoch
            last_ckpt[0] = time.monotonic()
            maybe_crash("epoch_end", state.epoch)

        # evaluation and the epoch's record
        prog = state.progress
        sums = torch.tensor([prog.loss_sum, prog.samples], dtype=torch.float64, device=dist.device)
        dist_utils.all_reduce_sum(sums)
        epoch_rec = {"type": "epoch", "epoch": state.epoch, "step": state.global_step,
                     "train_loss": float(sums[0] / sums[1]), "lr": optimizer.param_groups[0]["lr"],
                     "epoch_time_s": prog.train_time_s, "images_per_s": float(sums[1]) / max(prog.train_time_s, 1e-9),
                     "data_wait_s": prog.data_wait_s, "wall_time_s": state.elapsed_train_s,
                     "corrupt_skipped": data.train.corrupt_count}
        if (state.epoch + 1) % tc.eval_every == 0 or state.epoch + 1 == tc.epochs:
            dist_utils.broadcast_buffers(model)  # every rank evaluates with rank 0's BN statistics
            epoch_rec.update(evaluate(model, data.val, precision, dist.device, tc.channels_last, state.epoch))
            # kept in the training state, so that a run stopped after its last evaluation and
            # resumed still reports it
            state.final = {k: epoch_rec[k] for k in ("val_loss", "val_top1_err", "val_top5_err")}
            state.final.update(epoch=state.epoch, train_loss=epoch_rec["train_loss"])
        log_metrics(epoch_rec)
        maybe_crash("after_eval", state.epoch)
        if dist.is_main:
            log.info("epoch %d: train loss %.4f%s, %.0f img/s", state.epoch, epoch_rec["train_loss"],
                     f", val top-1 err {epoch_rec['val_top1_err']:.2f}%" if "val_top1_err" in epoch_rec else "",
                     epoch_rec["images_per_s"])
        state.epoch, state.batch, state.phase = state.epoch + 1, 0, "train"
        state.progress = type(prog)()
        save_checkpoint()
        last_ckpt[0] = time.monotonic()
        if stop.requested_anywhere():
            return stop_for_requeue("preempted")

    metrics.close()
    final = state.final
    if not math.isfinite(final.get("val_top1_err", math.nan)):
        raise DataError(f"the run ended without a finite final validation error (final={final}); "
                        f"check that the validation split holds images of every rank")
    record.update(status="finished", end_time=now(), final=final, wall_time_s=state.elapsed_train_s)
    tracker.finish()
    if dist.is_main:
        print(f"final top-1 error {final['val_top1_err']:.2f}% "
              f"(top-5 {final['val_top5_err']:.2f}%) after {tc.epochs} epochs; run record in {run_dir}")
    return 0


def _stopped_during_startup(stop: StopFlag, is_main: bool) -> int:
    if is_main:
        print(f"stopped during start-up (signal {stop.signal_name}) before any training step; exit "
              f"{REQUEUE_EXIT_CODE} asks for a requeue", file=sys.stderr)
    return REQUEUE_EXIT_CODE


def mark_failed(exc: BaseException) -> None:
    for record in _ACTIVE_RECORD:
        if record.data.get("status") == "running":
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                record.update(status=status, end_time=now(), error=f"{type(exc).__name__}: {one_line(exc)}")
            except OSError:  # the disk that failed the run may fail this write too
                pass


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    prefix = f"{type(exc).__name__}: "
    for line in reversed(lines):
        if line.startswith(prefix) or f".{prefix}" in line:
            return line.split(prefix, 1)[1]
    return lines[0] if lines else type(exc).__name__


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        code = train(cfg)
    except (ConfigError, DataError, CheckpointError, OSError) as exc:
        # OSError: a run directory that cannot be written, a full disk, a vanished dataset file
        mark_failed(exc)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        hint = "" if not isinstance(exc, OSError) else " (free space or choose a writable hydra.run.dir)"
        print(f"error: {one_line(exc)}{hint}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as exc:
        mark_failed(exc)
        print("interrupted (Ctrl-C): run.json says interrupted; rerun the same command to resume from the "
              "last checkpoint", file=sys.stderr)
        code = 130
    except BaseException as exc:
        mark_failed(exc)
        raise
    finally:
        dist_utils.cleanup()
    if code:
        sys.exit(code)


def preflight(argv: list[str]) -> None:
    """Compose the config as @hydra.main will, so that a bad override (unknown key or option,
    wrong type) fails with one line instead of Hydra's multi-line report. Skipped for sweeps
    and for Hydra's own flags."""
    if not argv or any(a.startswith("-") for a in argv) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra import compose, initialize_config_dir

    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "configs"), version_base="1.3"):
            composed = compose("config", overrides=argv, return_hydra_config=True)
        run_dir = Path(str(OmegaConf.select(composed, "hydra.run.dir")))
    except Exception as exc:
        noise = ("full_key:", "reference_type", "object_type", "Config search path", "provider=",
                 "Set the environment variable", "To append to your config")
        lines = []
        while exc is not None:  # the cause (e.g. "Key 'foo' not in 'TrainerConfig'") says the most
            lines += [line.strip() for line in str(exc).splitlines()
                      if line.strip() and not line.strip().startswith(noise) and line.strip() not in lines]
            exc = exc.__cause__
        message = '; '.join(lines).replace(':; ', ': ').replace('.; ', '; ')
        if any(ord(c) > 127 for c in " ".join(argv)):
            message += " (values with non-ASCII characters must be quoted: key='value')"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    try:  # Hydra creates the run directory before train() runs: check it here, in one line
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(f"error: cannot create or write the run directory {run_dir} ({exc.strerror}); choose a writable "
              f"hydra.run.dir", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
