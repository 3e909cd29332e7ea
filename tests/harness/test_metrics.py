"""The epoch and evaluation metrics measure what their names say: top-5 error only where it can be
other than 0; timings of the slowest rank under DDP (a real 2-rank gloo torchrun with one slow
rank); training time up to the end of the epoch's last step."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from adarem.config import ScheduleConfig, TrainerConfig
from adarem.engine import Precision, TrainState, evaluate, train_epoch
from adarem.run.signals import StopFlag
from adarem.schedule import build_scheduler
from tests.conftest import read_metrics, read_run, run_train, torchrun

SLOW_RANK_TRAIN = Path(__file__).with_name("_slow_rank_train.py")


class ListLoader:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_batch=0):
        yield from self.batches[start_batch:]


def _batches(n: int, classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=gen), torch.randint(0, classes, (8,), generator=gen)) for _ in range(n)]


def test_top5_error_is_null_for_five_classes_or_fewer():
    """With C <= 5 classes every class is in the top 5: the error was 0.0 whatever the weights."""
    for classes, top5 in ((3, False), (5, False), (6, True), (10, True)):
        torch.manual_seed(0)
        model = nn.Linear(4, classes)
        out = evaluate(model, ListLoader(_batches(3, classes)), Precision(None, None), torch.device("cpu"), False,
                       num_classes=classes)
        assert out["val_samples"] == 24 and math.isfinite(out["val_top1_err"])
        if top5:
            assert isinstance(out["val_top5_err"], float) and 0 <= out["val_top5_err"] <= out["val_top1_err"]
        else:
            assert out["val_top5_err"] is None, (classes, out)
        # the logits' width decides when no count is given
        again = evaluate(model, ListLoader(_batches(3, classes)), Precision(None, None), torch.device("cpu"), False)
        assert again == out


def test_a_three_class_run_records_no_top5_and_the_tables_show_none(tmp_path, env):
    """Through train.py: metrics.jsonl and run.json hold null, the final line says why, the tables
    show no top-5 (an older record's 0.0 for such a task is read as none too)."""
    from adarem.results.records import load_runs
    from adarem.results.tables import error_table

    run_dir = tmp_path / "runs" / "three"
    res = run_train(["data=synthetic", "data.num_classes=3", "data.image_size=16", "data.synthetic_train_size=256",
                     "data.synthetic_val_size=64", "trainer.evals_per_epoch=2"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no top-5: 5 classes or fewer" in res.stdout
    run = read_run(run_dir)
    assert run["status"] == "finished" and run["final"]["val_top5_err"] is None
    scored = [m for m in read_metrics(run_dir) if "val_top1_err" in m]
    assert len(scored) == 4 and all(m["val_top5_err"] is None for m in scored)
    assert all(json.loads(line).get("val_top5_err", "x") is None for line in
               (run_dir / "metrics.jsonl").read_text().splitlines() if "val_top1_err" in line)

    def top5_cells():
        rs = load_runs(tmp_path / "runs")
        assert len(rs.runs) == 1 and math.isnan(rs.runs.final_top5.iloc[0]) and math.isnan(rs.runs.best_top5.iloc[0])
        table = error_table(rs)
        return [str(table[c].iloc[0]) for c in table.columns if "top-5" in c]

    assert top5_cells() == ["—", "—"]
    # a record written before: 0.0 for the same task
    lines = (run_dir / "metrics.jsonl").read_text().replace('"val_top5_err": null', '"val_top5_err": 0.0')
    (run_dir / "metrics.jsonl").write_text(lines)
    assert top5_cells() == ["—", "—"]


def test_slowest_rank_times_under_ddp(tmp_path, env):
    """2 gloo ranks, rank 1 waiting 60 ms for each training batch: the epoch line's data_wait_s,
    epoch_time_s and images_per_s are the slowest rank's (they were rank 0's, which waited ~0),
    and wall_time_s (epoch and mid-epoch eval lines) adds up the slowest rank's times."""
    run_dir = tmp_path / "ddp"
    delay = 0.06
    res = run_train(["trainer.evals_per_epoch=2"], dict(env, SLOW_RANK="1", SLOW_RANK_DELAY=str(delay)), run_dir,
                    launcher=torchrun(2) + [str(SLOW_RANK_TRAIN)], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = read_run(run_dir)
    assert run["world_size"] == 2
    steps = run["steps_per_epoch"]
    lines = read_metrics(run_dir)
    epochs = [m for m in lines if m["type"] == "epoch"]
    assert len(epochs) == 2
    total = 0.0
    for m in epochs:
        assert m["data_wait_s"] >= delay * steps, m  # rank 1's wait, not rank 0's
        assert m["epoch_time_s"] >= m["data_wait_s"]
        assert math.isclose(m["images_per_s"], steps * 64 / m["epoch_time_s"], rel_tol=1e-9)
        total += m["epoch_time_s"]
        assert math.isclose(m["wall_time_s"], total, rel_tol=1e-9)
    assert math.isclose(run["wall_time_s"], total, rel_tol=1e-9)
    evals = [m for m in lines if m["type"] == "eval"]
    assert len(evals) == 2
    for e, m in zip(evals, epochs):  # half an epoch's waits of rank 1 at least
        assert m["wall_time_s"] - m["epoch_time_s"] + delay * (steps // 2) <= e["wall_time_s"] <= m["wall_time_s"]


def test_training_time_runs_to_the_end_of_the_last_step():
    """Everything train_epoch spends after its last step's optimizer update (the last iter line,
    the stop decision; on a GPU the last steps' queued device work) is training time: it was left
    out, so the epoch's time missed its last logging point."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ListLoader(_batches(6, 3))
    scheduler = build_scheduler(ScheduleConfig(), optimizer, 1, len(loader))
    pause = 0.5

    def epoch(on_log) -> tuple[TrainState, float]:
        state = TrainState()
        t0 = time.perf_counter()
        out = train_epoch(model, loader, optimizer, scheduler, Precision(None, None), torch.device("cpu"),
                          TrainerConfig(log_every=3), state, StopFlag(), on_log, None, lambda: False)
        assert out.reason == "epoch_end" and state.global_step == 6
        return state, time.perf_counter() - t0

    epoch(lambda rec: None)  # warm-up: the first steps' lazy initialisation is no part of what is measured
    state, wall = epoch(lambda rec: time.sleep(pause) if rec["step"] == 6 else None)  # the last iter line
    # all of the call is training time but its start (creating the pass): the pause was left out
    assert pause <= state.progress.train_time_s <= wall < state.progress.train_time_s + pause / 2


def test_lr_is_the_one_the_step_trained_with():
    """An iter line's lr is the lr its step's update used, and an epoch's lr its last step's: they
    were the next step's (read after the scheduler's step_update), so at a step schedule's
    milestone the last line of the epoch before it showed the decayed lr it never trained with."""
    from adarem.config import TrainerConfig as TC

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ListLoader(_batches(6, 3))
    # milestone 1: the decay starts at the first step of epoch 1 (schedule.py)
    scheduler = build_scheduler(ScheduleConfig(name="step", milestones=[1], decay_rate=0.1), optimizer, 2,
                                len(loader))
    used = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    state, lines, epoch_lr = TrainState(), [], []
    for epoch in (0, 1):
        state.epoch, state.batch = epoch, 0
        train_epoch(model, loader, optimizer, scheduler, Precision(None, None), torch.device("cpu"),
                    TC(log_every=2), state, StopFlag(), lines.append, None, lambda: False)
        epoch_lr.append(getattr(state.progress, "lr", None))  # what the epoch line records
    assert used == [pytest.approx(0.1)] * 6 + [pytest.approx(0.01)] * 6
    iters = [m for m in lines if m["type"] == "iter"]
    assert [m["step"] for m in iters] == [2, 4, 6, 8, 10, 12]
    assert [m["lr"] for m in iters] == [used[m["step"] - 1] for m in iters]  # step 6's was 0.01
    assert epoch_lr == [used[5], used[11]]
