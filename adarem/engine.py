"""The training step, one epoch of training, and evaluation.

``train_epoch`` is resumable at any batch: its accumulators live in ``EpochProgress``, which the
checkpoint stores, and it stops early (returning why) on a preemption signal, a time-based
checkpoint, divergence or ``trainer.max_steps``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from adarem import distributed as dist_utils
from adarem.config import ConfigError, TrainerConfig
from adarem.faults import maybe_crash, poisoned
from adarem.oscillation import OscillationTracker
from adarem.run.record import TOP5_MIN_CLASSES
from adarem.run.signals import StopFlag


@dataclass
class EpochProgress:
    """Running sums of the current epoch; saved in mid-epoch checkpoints."""

    loss_sum: float = 0.0
    samples: int = 0
    window_loss_sum: float = 0.0  # since the last "iter" line: its train_loss_window
    window_samples: int = 0
    window_steps: int = 0
    data_wait_s: float = 0.0
    train_time_s: float = 0.0
    corrupt_skipped: int = 0  # unreadable training images replaced on this rank (data.on_corrupt=skip)
    # the learning rate the last step trained with (the epoch line's lr); the optimizer's holds the
    # next step's by then. None: no step yet, or a checkpoint written before it was kept
    lr: Optional[float] = None

    def state_dict(self) -> dict:
        return asdict(self)


@dataclass
class Divergence:
    step: int
    loss: float
    # "training": the training loss of ``step`` was not finite (or absurd); "validation": the weights
    # after ``step`` gave a non-finite validation loss (its top-1 error, an argmax of NaN logits, is
    # no result), e.g. an update that blew them up on the last step, after its loss was computed
    where: str = "training"


@dataclass
class StepOutcome:
    reason: str  # "epoch_end" | "preempt" | "diverged" | "max_steps" | "timed_checkpoint"
    divergence: Optional[Divergence] = None


@dataclass
class Precision:
    autocast_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]

    @property
    def name(self) -> str:
        """What trainer.amp resolved to (run.json's ``amp``): bf16, fp16 or none (fp32)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype, "none")

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def make_precision(amp: str, device: torch.device) -> Precision:
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("trainer.amp=fp16 needs a CUDA device (GradScaler); on CPU use trainer.amp=bf16 or none")
        return Precision(torch.float16, torch.amp.GradScaler("cuda"))
    if amp == "bf16":
        return Precision(torch.bfloat16, None)
    return Precision(None, None)


@dataclass
class TrainState:
    """Everything the loop mutates besides model/optimizer/scheduler."""

    epoch: int = 0
    batch: int = 0  # next batch of `epoch` to train
    global_step: int = 0
    phase: str = "train"  # "train": training epoch `epoch`; "eval": epoch trained, eval pending
    elapsed_train_s: float = 0.0  # cumulative training wall time, over restarts
    progress: EpochProgress = field(default_factory=EpochProgress)
    final: dict = field(default_factory=dict)  # the last evaluation's metrics (run.json "final")
    corrupt_skipped: int = 0  # over the epochs evaluated so far, all ranks (run.json "corrupt_skipped")
    corrupt_exact: bool = True  # False: resumed from a checkpoint written before the count was kept


class LossWatch:
    """Collects per-step losses on the device and checks them only when asked, so that the
    training step needs no host sync; names the first step whose loss was not finite (or absurd).

    Under DDP the decision is collective: every rank checks at the same steps and all agree on
    the earliest bad step of any rank. A rank that stopped alone would leave the others waiting
    in their next collective until the NCCL timeout."""

    def __init__(self, limit: float, distributed: bool = False, device: torch.device = torch.device("cpu")):
        self.limit = limit
        self.distributed = distributed
        self.device = device
        self.pending: list[tuple[int, torch.Tensor]] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        if poisoned("nan_loss", step):  # fault injection: this rank alone sees a NaN
            loss = loss.detach() * math.nan
        if poisoned("huge_loss", step):  # ... or an absurd but finite loss
            loss = loss.detach() * 0 + 1e30
        self.pending.append((step, loss.detach().float()))

    def check(self) -> Optional[Divergence]:
        local = None
        if self.pending:
            losses = torch.stack([l for _, l in self.pending]).cpu()
            steps = [s for s, _ in self.pending]
            self.pending.clear()
            bad = ~torch.isfinite(losses) | (losses > self.limit)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                local = Divergence(steps[i], float(losses[i]))
        if not self.distributed:
            return local
        first = torch.tensor([local.step if local else math.inf], dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_min(first)
        step = float(first)
        if math.isinf(step):
            return None
        # the loss itself, from a rank that saw it (rank 0 alone writes the record): one more
        # collective, only when the run has diverged
        seen = dist_utils.all_gather_object((local.step, local.loss) if local is not None else None)
        return Divergence(int(step), next(loss for s, loss in filter(None, seen) if s == int(step)))


def to_device(loader, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """A loader's batch as the model takes it. A loader that defines ``to_device`` finishes its
    batches itself on the device (e.g. uint8 images normalised there); otherwise the batch is
    copied as it is."""
    if hasattr(loader, "to_device"):
        return loader.to_device(x, y, device, channels_last)
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def device_batches(loader, batches: Iterator, device: torch.device, channels_last: bool,
                   limit: Optional[int] = None) -> Iterator:
    """``batches`` (a pass of ``loader``) as the model takes them, through ``to_device``; at most
    ``limit`` of them (none is read beyond it).

    On CUDA, for a loader that finishes its host batches on the device (the torch loader: uint8
    from pinned memory), the next batch is copied and normalised on a side stream while the
    current one is computed: its copy does not wait behind the step's kernels on the compute
    stream. The compute stream waits for the side stream before it reads a batch, and each batch
    is marked as used there (``record_stream``) so that the allocator does not hand its memory
    back to the side stream early. The loader is thus read one batch ahead: a pass left early
    (timed checkpoint, stop) drops the staged batch and takes its unreadable files back out of
    ``corrupt_count`` (the pass that resumes reads it again). Elsewhere (CPU; DALI and synthetic
    batches, already on the device, which DALI may recycle) each batch is finished when taken."""
    # staged_corrupt: the staged batch's unreadable files, kept here because a nested pass of the
    # same loader (BN recalibration in a mid-epoch evaluation) overwrites loader.last_batch_corrupt
    staged, source, staged_corrupt = None, batches, 0
    try:
        if limit is not None:
            batches = itertools.islice(source, limit)
        if device.type != "cuda" or not hasattr(loader, "to_device"):
            for x, y in batches:
                yield to_device(loader, x, y, device, channels_last)
            return
        side = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)

        def stage(batch):
            nonlocal staged_corrupt
            if batch is None:
                return None
            staged_corrupt = getattr(loader, "last_batch_corrupt", 0)
            with torch.cuda.stream(side):
                return to_device(loader, *batch, device, channels_last)

        staged = stage(next(batches, None))
        while staged is not None:
            compute.wait_stream(side)
            for t in staged:
                t.record_stream(compute)
            current, staged = staged, stage(next(batches, None))
            yield current
    finally:
        if staged is not None and hasattr(loader, "corrupt_count"):
            loader.corrupt_count -= staged_corrupt  # read ahead, never trained on
        close = getattr(source, "close", None)
        if close is not None:
            close()  # the loader's pass ends now (a kept DataLoader goes back to its pool)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, precision: Precision,
                device: torch.device, cfg: TrainerConfig, state: TrainState, stop: StopFlag,
                on_log: Callable[[dict], None], oscillation: Optional[OscillationTracker],
                checkpoint_due: Callable[[], bool], progress_bar=None,
                eval_batches: frozenset[int] = frozenset(),
                on_eval: Optional[Callable[[], Optional[Divergence]]] = None
                ) -> StepOutcome:
    """Train from ``state.batch`` to the epoch's end or an early stop. After each batch number in
    ``eval_batches`` (mid-epoch evaluation points) ``on_eval()`` runs, before the stop decision of
    that step, so a checkpoint written at or after the point always follows its evaluation; its
    time is not counted as training time. It returns a Divergence when the evaluation found the
    weights diverged (a non-finite validation loss), which ends the epoch as a divergence."""
    model.train()
    watch = LossWatch(cfg.diverge_loss, stop.distributed, device)
    world = torch.distributed.get_world_size() if stop.distributed else 1  # for the progress bar's img/s
    prog = state.progress
    t_last = time.perf_counter()
    it = device_batches(loader, iter(loader.epoch(state.epoch, state.batch)), device, cfg.channels_last)
    corrupt_before = getattr(loader, "corrupt_count", 0)
    try:
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            prog.data_wait_s += time.perf_counter() - t0

            step = state.global_step + 1
            lr = optimizer.param_groups[0]["lr"]  # this step's: scheduler.step_update below sets the next one's
            if oscillation is not None:
                oscillation.before_step(step)
            with precision.autocast(device):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if precision.scaler is not None:
                precision.scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    precision.scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                precision.scaler.step(optimizer)
                precision.scaler.update()
            else:
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            state.global_step = step
            state.batch += 1
            maybe_crash("step", step)
            scheduler.step_update(num_updates=step)
            prog.lr = lr
            watch.add(step, loss)
            prog.loss_sum += loss.detach().double() * y.shape[0]  # a device scalar until the epoch ends
            prog.samples += y.shape[0]
            prog.window_loss_sum += loss.detach().double() * y.shape[0]
            prog.window_samples += y.shape[0]
            prog.window_steps += 1
            if oscillation is not None:
                record = oscillation.after_step(step)
                if record is not None:
                    on_log(record)

            now = time.perf_counter()
            prog.train_time_s += now - t_last
            t_last = now
            if progress_bar is not None:
                progress_bar.update(1)
            last_of_epoch = state.batch >= len(loader)
            if step % cfg.log_every == 0 or last_of_epoch:
                div = watch.check()
                if div is not None:
                    return StepOutcome("diverged", div)
                # train_loss_window: the mean loss over the steps since the previous line, over all
                # ranks (one batch's loss alone is too noisy to read "train loss at x %" from)
                window = torch.stack([torch.as_tensor(prog.window_loss_sum, dtype=torch.float64, device=device),
                                      torch.tensor(float(prog.window_samples), dtype=torch.float64, device=device)])
                dist_utils.all_reduce_sum(window)
                total, n = window.tolist()
                on_log({"type": "iter", "epoch": state.epoch, "step": step, "loss": loss.item(),
                        "train_loss_window": total / max(n, 1), "train_loss_window_steps": prog.window_steps, "lr": lr})
                prog.window_loss_sum, prog.window_samples, prog.window_steps = 0.0, 0, 0
                if progress_bar is not None:
                    progress_bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}",
                                             # every rank trains as many images as this one
                                             img_s=f"{prog.samples * world / max(prog.train_time_s, 1e-9):.0f}")
            if on_eval is not None and state.batch in eval_batches and not last_of_epoch:
                div = watch.check()  # collective under DDP, like the evaluation itself
                if div is not None:
                    return StepOutcome("diverged", div)
                # up to here training time: the check waited for the steps' queued device work
                now = time.perf_counter()
                prog.train_time_s += now - t_last
                t_last = now
                div = on_eval()  # a non-finite validation loss: the weights diverged
                if div is not None:
                    return StepOutcome("diverged", div)
                model.train()
                t_last = time.perf_counter()  # evaluation is not training time
            reason = None
            # Single process: the stop flag is a host variable, read every step for free. Under DDP
            # the decision is an all-reduce plus a host sync, so it is taken every stop_check_every
            # steps (the same steps on every rank) and at the epoch's end.
            if not stop.distributed or step % cfg.stop_check_every == 0 or last_of_epoch:
                stop_now, checkpoint_now = stop.poll(checkpoint_due())
            else:
                stop_now = checkpoint_now = False
            at_limit = cfg.max_steps and step >= cfg.max_steps and not last_of_epoch
            if stop_now and not at_limit:
                reason = "preempt"
            elif at_limit:  # a signal at the limit's step too: nothing is left to requeue for
                reason = "max_steps"
            elif checkpoint_now and not last_of_epoch:
                reason = "timed_checkpoint"
            if reason is not None:
                div = watch.check()  # never checkpoint diverged weights
                if div is not None:
                    return StepOutcome("diverged", div)
                return StepOutcome(reason)
        div = watch.check()
        if div is not None:
            return StepOutcome("diverged", div)
        return StepOutcome("epoch_end")
    finally:  # the pass ends, however (diverged too): its counts into the checkpointed epoch progress
        _to_host(prog)
        # the time since the last step's end is training time too: the last iter line and stop
        # decision (collectives under DDP) and, on a GPU, the queued work of the last steps, which
        # the host ran ahead of and _to_host's copy waits for
        prog.train_time_s += time.perf_counter() - t_last
        it.close()  # un-counts a batch read ahead and never trained on
        prog.corrupt_skipped += getattr(loader, "corrupt_count", 0) - corrupt_before


def _to_host(prog: EpochProgress) -> None:
    """The device accumulators as floats, for the checkpoint and the epoch line."""
    prog.loss_sum = float(prog.loss_sum)
    prog.window_loss_sum = float(prog.window_loss_sum)


@torch.no_grad()
def evaluate(model: nn.Module, loader, precision: Precision, device: torch.device, channels_last: bool,
             epoch: int = -1, num_classes: Optional[int] = None) -> dict:
    """Loss and top-1/top-5 error over the whole validation set, each image counted once.

    Ranks evaluate disjoint shards (see adarem/data/sampling.py) and the sums are all-reduced.
    ``model`` must be the bare module (not DDP), since ranks may run different batch counts.

    ``val_top5_err`` is None (null in the records) for a task of 5 classes or fewer
    (``num_classes``, else the logits' width): every class is then in the top 5 and the error is 0
    whatever the weights, no measurement.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1 correct, top5 correct, n
    n_local = 0  # counted on the host: no host-to-device copy per batch
    for i, (x, y) in enumerate(device_batches(loader, iter(loader.epoch(0)), device, channels_last)):
        if i == 1:
            maybe_crash("eval", epoch)
        with precision.autocast(device):
            logits = model(x)
        logits = logits.float()
        if num_classes is None:
            num_classes = logits.shape[1]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        correct = topk.eq(y[:, None])
        sums[:3] += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 correct[:, 0].sum().double(), correct.any(dim=1).sum().double()])
        n_local += y.shape[0]
    sums[3] = n_local
    dist_utils.all_reduce_sum(sums)
    loss, c1, c5, n = sums.tolist()
    top5 = num_classes is None or num_classes >= TOP5_MIN_CLASSES  # None: no batch here, nor a count given
    if n == 0:
        return {"val_loss": math.nan, "val_top1_err": math.nan, "val_top5_err": math.nan if top5 else None,
                "val_samples": 0}
    return {"val_loss": loss / n, "val_top1_err": 100.0 * (1 - c1 / n),
            "val_top5_err": 100.0 * (1 - c5 / n) if top5 else None, "val_samples": int(n)}


@contextlib.contextmanager
def recalibrated_bn(model: nn.Module, loader, epoch: int, n_batches: int, precision: Precision,
                    device: torch.device, channels_last: bool):
    """Within the block, every BatchNorm layer holds statistics recomputed from scratch on the first
    ``n_batches`` training batches of ``epoch`` (an equal-weight average, averaged over ranks)
    instead of its running averages; on exit the running averages are put back.

    Why: early in training, and more so with adaptive optimizers, the exponential running averages
    lag the weights and evaluation measures stale statistics rather than the weights (issue 12).
    Training is unaffected: only BN layers run in train mode (no dropout, so no RNG draw), the
    loader's augmentation is seeded per sample, and the buffers are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or n_batches <= 0:
        yield
        return
    saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    was_training = model.training
    corrupt = getattr(loader, "corrupt_count", 0)  # re-read batches must not count twice
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for x, _ in device_batches(loader, iter(loader.epoch(epoch, 0)), device, channels_last, limit=n_batches):
                with precision.autocast(device):
                    model(x)
        for m in bns:
            m.eval()
            for buf in (m.running_mean, m.running_var):
                dist_utils.all_reduce_mean(buf)
        yield
    finally:
        for m, (momentum, buffers) in zip(bns, saved):
            m.momentum = momentum
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
        model.train(was_training)
        if hasattr(loader, "corrupt_count"):
            loader.corrupt_count = corrupt


def progress_bar(total: int, initial: int, desc: str, mode: str, is_main: bool):
    """tqdm on an interactive terminal (or when asked), nothing otherwise (plain lines are logged)."""
    if not is_main or mode in ("lines", "none"):
        return None
    if mode == "auto" and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
