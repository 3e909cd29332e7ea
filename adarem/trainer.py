"""The epoch loop of a prepared run (``adarem/run_setup.py``): train, checkpoint, evaluate, record.

An epoch is two phases, each resumable: ``train`` (``engine.train_epoch``, which stops early on a
signal, a timed checkpoint, divergence or ``trainer.max_steps``) and ``eval`` (evaluation and the
epoch's metrics line). A checkpoint is written at the end of each phase, so a kill at any point
loses at most the work since the last one. ``run`` returns the process's exit code: 0 (finished;
diverged: divergence is a result; stopped at ``trainer.max_steps``, as asked) or 75 (preempted by a
signal; "requeue me").
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Optional

import torch

from adarem.run import checkpoint as ckpt_io
from adarem import distributed as dist_utils
from adarem.data import DataError
from adarem.engine import Divergence, EpochProgress, evaluate, progress_bar, recalibrated_bn, train_epoch
from adarem.faults import maybe_crash
from adarem.run.record import now, segment_provenance
from adarem.run_setup import Run
from adarem.run.signals import REQUEUE_EXIT_CODE, StopFlag

log = logging.getLogger("train")


def slowest_rank(prog: EpochProgress, device: torch.device) -> None:
    """The epoch's training time and data wait of the slowest rank, on every rank (one all-reduce;
    nothing without a process group): the epoch line's ``epoch_time_s``, ``data_wait_s`` and
    ``images_per_s`` (all ranks' images over that time) and the run's ``wall_time_s`` are the
    slowest rank's, not rank 0's, which may have waited less for its data. Both are kept in the
    epoch progress that the end-of-training checkpoint stores, so a resume in the eval phase reads
    the same."""
    t = torch.tensor([prog.train_time_s, prog.data_wait_s], dtype=torch.float64, device=device)
    dist_utils.all_reduce_max(t)
    prog.train_time_s, prog.data_wait_s = t.tolist()


class Trainer:
    def __init__(self, run: Run, stop: StopFlag):
        self.run_ = run
        self.stop = stop
        self.tc = run.config.trainer
        self.state = run.state
        self.last_checkpoint = time.monotonic()
        self.bar = None  # the tqdm bar of the current epoch, if any
        self.oscillation = run.oscillation  # built (and restored from the checkpoint) by run_setup
        # mid-epoch evaluation points (batch numbers); the epoch's end is evaluated by eval_phase
        n, k = len(run.data.train), self.tc.evals_per_epoch  # k <= n: run_setup.prepare refused more
        self.eval_batches = frozenset(b for b in (round(i * n / k) for i in range(1, k)) if 0 < b < n)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        state = self.state
        while state.epoch < self.tc.epochs:
            if state.phase == "train":
                outcome = self.train_phase()
                if outcome.reason == "diverged":
                    return self.diverged(outcome.divergence)
                if outcome.reason != "epoch_end":
                    self.save_checkpoint()
                    if outcome.reason == "timed_checkpoint":
                        continue
                    if outcome.reason == "max_steps":
                        return self.stop_at_max_steps()
                    return self.stop_for_requeue()
                slowest_rank(state.progress, self.run_.dist.device)  # before the checkpoint below keeps it
                state.elapsed_train_s += state.progress.train_time_s
                state.phase = "eval"
                self.save_checkpoint()  # a kill during evaluation does not lose the epoch
                maybe_crash("epoch_end", state.epoch)
            div = self.eval_phase()
            if div is not None:
                return self.diverged(div)
            state.epoch, state.batch, state.phase = state.epoch + 1, 0, "train"
            state.progress = EpochProgress()
            self.save_checkpoint()
            if self.tc.max_steps and state.global_step >= self.tc.max_steps and state.epoch < self.tc.epochs:
                # the limit fell on an epoch's last step (train_epoch lets the epoch end and be
                # evaluated): stop here rather than one step into the next epoch; also when a
                # signal came meanwhile, as nothing is left to requeue for
                return self.stop_at_max_steps()
            # a signal with no step left (during or after the last evaluation) changes nothing: the
            # run finishes, rather than asking for a requeue that would only write "finished"
            if state.epoch < self.tc.epochs and self.stop.requested_anywhere():
                return self.stop_for_requeue()
        return self.finish()

    def train_phase(self):
        r, state = self.run_, self.state
        self.bar = progress_bar(len(r.data.train), state.batch, f"epoch {state.epoch}", r.config.logging.progress,
                                r.dist.is_main)
        try:
            return train_epoch(r.train_model, r.data.train, r.optimizer, r.scheduler, r.precision, r.dist.device,
                               self.tc, state, self.stop, self.log_metrics, self.oscillation, self.checkpoint_due,
                               self.bar, self.eval_batches, self.mid_epoch_eval)
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def eval_phase(self) -> Optional[Divergence]:
        """The epoch's metrics line, with an evaluation when one is due; a Divergence (and no line)
        when that evaluation found the weights diverged."""
        r, state, tc = self.run_, self.state, self.tc
        prog = state.progress
        sums = torch.tensor([prog.loss_sum, prog.samples, prog.corrupt_skipped], dtype=torch.float64,
                            device=r.dist.device)
        dist_utils.all_reduce_sum(sums)
        loss_sum, samples, corrupt = sums.tolist()
        rec = {"type": "epoch", "epoch": state.epoch, "step": state.global_step,
               # the lr of the epoch's last step (the optimizer's is the next epoch's first by now)
               "train_loss": loss_sum / samples,
               "lr": prog.lr if prog.lr is not None else r.optimizer.param_groups[0]["lr"],
               "epoch_time_s": prog.train_time_s, "images_per_s": samples / max(prog.train_time_s, 1e-9),
               "data_wait_s": prog.data_wait_s, "wall_time_s": state.elapsed_train_s,
               "corrupt_skipped": int(corrupt)}  # this epoch's, every rank's
        if (state.epoch + 1) % tc.eval_every == 0 or state.epoch + 1 == tc.epochs:
            rec["epoch_frac"] = state.epoch + 1.0
            rec.update(self.evaluate())
            div = self.diverged_weights(rec)
            if div is not None:  # before the run's total moves: diverged() adds this epoch's count
                return div
            # kept in the training state (and so in checkpoints): a run stopped after its last
            # evaluation and resumed still reports it
            state.final = {k: rec[k] for k in ("val_loss", "val_top1_err", "val_top5_err")}
            state.final.update(epoch=state.epoch, train_loss=rec["train_loss"])
        # the run's total moves with the epoch: both are in the checkpoint saved after this phase
        state.corrupt_skipped += int(corrupt)
        if corrupt and r.dist.is_main:
            log.warning("epoch %d trained on %d replacement(s) for unreadable training images "
                        "(data.on_corrupt=skip; %d in the run so far)", state.epoch, int(corrupt), state.corrupt_skipped)
        self.log_metrics(rec)
        maybe_crash("after_eval", state.epoch)
        if r.dist.is_main:
            log.info("epoch %d: train loss %.4f%s, %.0f img/s", state.epoch, rec["train_loss"],
                     f", val top-1 err {rec['val_top1_err']:.2f}%" if "val_top1_err" in rec else "",
                     rec["images_per_s"])
        return None

    def mid_epoch_eval(self) -> Optional[Divergence]:
        """An evaluation inside the epoch (trainer.evals_per_epoch > 1): one "eval" line with the
        step and the training wall-clock so far; a Divergence (and no line) when it found the
        weights diverged."""
        r, state = self.run_, self.state
        # the slowest rank's training time so far, as in the epoch lines (one more collective, of
        # the evaluation's ranks)
        so_far = torch.tensor([state.progress.train_time_s], dtype=torch.float64, device=r.dist.device)
        dist_utils.all_reduce_max(so_far)
        rec = {"type": "eval", "epoch": state.epoch, "step": state.global_step,
               "epoch_frac": state.epoch + state.batch / len(r.data.train),
               "wall_time_s": state.elapsed_train_s + float(so_far)}
        rec.update(self.evaluate())
        div = self.diverged_weights(rec)
        if div is None:
            self.log_metrics(rec)
        return div

    def diverged_weights(self, rec: dict) -> Optional[Divergence]:
        """A non-finite validation loss over a non-empty split: the weights after this step are not
        finite (or give non-finite logits), though every training loss so far was finite (the update
        that blew them up came after its step's loss, e.g. on the run's last step). The top-1 error
        such an evaluation gives is an argmax over NaN logits, no result. Every rank agrees (the sums
        are all-reduced)."""
        if rec.get("val_samples") and not math.isfinite(rec["val_loss"]):
            return Divergence(self.state.global_step, rec["val_loss"], where="validation")
        return None

    def evaluate(self) -> dict:
        r, tc = self.run_, self.tc
        dist_utils.broadcast_buffers(r.model)  # every rank evaluates with rank 0's BN statistics
        with recalibrated_bn(r.model, r.data.train, self.state.epoch, tc.bn_recalibrate, r.precision, r.dist.device,
                             tc.channels_last):
            return evaluate(r.model, r.data.val, r.precision, r.dist.device, tc.channels_last, self.state.epoch,
                            r.data.num_classes)

    # ------------------------------------------------------------------ records and checkpoints
    def log_metrics(self, rec: dict) -> None:
        r = self.run_
        r.metrics.log(rec)
        r.tracker.log({k: v for k, v in rec.items()  # a null (top-5 of <= 5 classes) is no point of a curve
                       if k not in ("type", "per_layer", "per_layer_efficiency") and v is not None},
                      step=rec.get("step", self.state.global_step))
        if rec["type"] == "iter" and r.dist.is_main and self.bar is None and r.config.logging.progress != "none":
            log.info("epoch %d step %d loss %.4f lr %.4g", rec["epoch"], rec["step"], rec["loss"], rec["lr"])

    def checkpoint_due(self) -> bool:
        every = self.tc.checkpoint_every_min
        return every > 0 and time.monotonic() - self.last_checkpoint > 60 * every

    def save_checkpoint(self) -> None:
        r = self.run_
        per_rank = [ckpt_io.rank_state(self.state)]
        if r.dist.enabled:
            gathered = [None] * r.dist.world_size
            torch.distributed.all_gather_object(gathered, per_rank[0])
            per_rank = gathered
        if r.dist.is_main:
            r.metrics.flush()
            ckpt_io.save_atomic(ckpt_io.training_checkpoint(r.model, r.optimizer, r.scheduler, r.precision.scaler,
                                                            self.state, r.metrics.lines, per_rank, r.config_dict,
                                                            r.record.data.get("data_identity"),
                                                            # the last epoch done, no step follows: no window to keep
                                                            self.oscillation.state_dict()
                                                            if self.oscillation and self.state.epoch < self.tc.epochs
                                                            else None,
                                                            ckpt_io.device_info(r.dist.device, r.precision),
                                                            segment_provenance(r.record.data),
                                                            r.record.segment),
                                r.run_dir)
        dist_utils.barrier()
        self.last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------ how a run ends
    def stop_for_requeue(self) -> int:
        """Preempted (SIGTERM/SIGUSR1, submitit's signal), after the checkpoint: record it and ask
        the scheduler for a requeue (exit 75)."""
        r, step = self.run_, self.state.global_step
        self.record_stop("preempted", "preempt")
        if r.dist.is_main:
            print(f"preempted at step {step} (signal {self.stop.recorded_signal}); checkpoint written, exit "
                  f"{REQUEUE_EXIT_CODE} asks for a requeue; rerun with resume=auto to continue", file=sys.stderr)
        r.tracker.finish(exit_code=REQUEUE_EXIT_CODE)
        return REQUEUE_EXIT_CODE

    def stop_at_max_steps(self) -> int:
        """Stopped at trainer.max_steps, after the checkpoint: a stop that was asked for, so exit 0
        (no requeue, and torchrun does not report a failure). The run stays ``stopped``
        (stop_reason max_steps), not finished: a relaunch with a higher or no limit continues it,
        one at the same limit trains nothing (run_setup.prepare)."""
        r, step = self.run_, self.state.global_step
        self.record_stop("stopped", "max_steps")
        if r.dist.is_main:
            print(f"stopped at step {step} (trainer.max_steps={self.tc.max_steps}); checkpoint written; rerun "
                  f"with a higher or no trainer.max_steps to continue", file=sys.stderr)
        r.tracker.finish()
        return 0

    def record_stop(self, status: str, reason: str) -> None:
        r = self.run_
        r.metrics.close()
        r.record.update(status=status, stopped_at_step=self.state.global_step, signal=self.stop.recorded_signal,
                        stop_reason=reason)

    def diverged(self, div: Divergence) -> int:
        r = self.run_
        # every rank is here (the decision is collective): this epoch's replaced images, all ranks
        corrupt = torch.tensor([self.state.progress.corrupt_skipped], dtype=torch.float64, device=r.dist.device)
        dist_utils.all_reduce_sum(corrupt)
        # where: only for a validation loss (a training loss's lines and records are as they were)
        where = {} if div.where == "training" else {"where": div.where}
        r.metrics.log({"type": "diverged", "epoch": self.state.epoch, "step": div.step, "loss": div.loss, **where})
        r.metrics.close()
        r.record.update(status="diverged", end_time=now(), diverged_at_step=div.step,
                        final={"val_top1_err": None, "diverged_at_step": div.step},
                        corrupt_skipped=self.state.corrupt_skipped + int(corrupt), **self.corrupt_caveat(),
                        **({"diverged_in": div.where} if where else {}))
        if r.dist.is_main:
            what = "training loss" if div.where == "training" else "validation loss after"
            # an epoch's end is checkpointed before its evaluation; a mid-epoch evaluation comes before
            # any checkpoint of its step, so the last checkpoint is from before the weights blew up
            kept = ("checkpoint.pt holds those weights (written before the evaluation), checkpoint_prev.pt "
                    "the ones before" if div.where == "validation" and self.state.phase == "eval" else
                    "its last good checkpoint is kept")
            print(f"DIVERGED: {what} {div.loss} at step {div.step} (epoch {self.state.epoch}); the run is "
                  f"marked diverged in {r.run_dir / 'run.json'}; {kept}", file=sys.stderr)
        r.tracker.finish()
        return 0

    def corrupt_caveat(self) -> dict:
        """run.json's corrupt_skipped_exact=false when the run resumed from a checkpoint written
        before the count was kept: the epochs before it may have replaced more (the tables say "at
        least")."""
        return {} if self.state.corrupt_exact else {"corrupt_skipped_exact": False}

    def finish(self) -> int:
        r, final = self.run_, self.state.final
        r.metrics.close()
        if not math.isfinite(final.get("val_top1_err", math.nan)):
            raise DataError(f"the run ended without a finite final validation error (final={final}); "
                            f"check that the validation split holds images of every rank")
        r.record.update(status="finished", end_time=now(), final=final, wall_time_s=self.state.elapsed_train_s,
                        corrupt_skipped=self.state.corrupt_skipped, **self.corrupt_caveat())
        r.tracker.finish()
        if r.dist.is_main:
            top5 = final.get("val_top5_err")
            top5 = f"top-5 {top5:.2f}%" if top5 is not None else "no top-5: 5 classes or fewer"
            print(f"final top-1 error {final['val_top1_err']:.2f}% ({top5}) after "
                  f"{self.tc.epochs} epochs; run record in {r.run_dir}")
        return 0
