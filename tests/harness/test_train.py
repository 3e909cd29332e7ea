"""train.py end to end: the real command line, real Hydra composition, real digits JPEGs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from adarem.optim.adarem import cpu_kernel_error
from tests.conftest import REPO, copy_run, read_metrics, read_run, run_train, torchrun

TIMING = {"epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s"}


def test_default_run_writes_a_complete_record(tmp_path, env):
    run_dir = tmp_path / "run"
    res = run_train(["trainer.oscillation_every=3"], env, run_dir)
    assert res.returncode == 0, res.stderr
    assert "final top-1 error" in res.stdout
    run = read_run(run_dir)
    assert run["status"] == "finished"
    assert run["config"]["optimizer"]["variant"] == "adarem"
    assert run["world_size"] == 1 and run["versions"]["torch"]
    assert "commit" in run["git"] and run["start_time"] and run["end_time"]
    lines = read_metrics(run_dir)
    epochs = [m for m in lines if m["type"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [0, 1]
    assert epochs[-1]["val_samples"] == run["val_samples"] == 359  # every digits val image, once
    assert epochs[-1]["val_top1_err"] < epochs[0]["val_top1_err"] + 20
    assert math.isclose(run["final"]["val_top1_err"], epochs[-1]["val_top1_err"])
    assert any(m["type"] == "iter" for m in lines)
    osc = [m for m in lines if m["type"] == "oscillation"]
    assert osc and all(0 <= m["flip_fraction"] <= 1 for m in osc) and osc[0]["per_layer"]
    # a second launch into the finished directory reports it and changes nothing
    before = (run_dir / "metrics.jsonl").read_bytes()
    again = run_train(["trainer.oscillation_every=3"], env, run_dir)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def _comparable(lines):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


@pytest.mark.parametrize("optimizer", ["adarem_m", "sgd"])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, env, optimizer):
    common = [f"optimizer={optimizer}", "trainer.deterministic=true", "model.drop_rate=0.2",
              "data.random_resized_crop=true", "data.hflip=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(common, env, straight).returncode == 0
    stop = run_train(common + ["trainer.max_steps=7"], env, resumed)  # mid-epoch 1 (5 steps per epoch)
    assert stop.returncode == 0, stop.stderr
    assert read_run(resumed)["status"] == "stopped"
    res = run_train(common, env, resumed)
    assert res.returncode == 0, res.stderr
    assert read_run(resumed)["restarts"] == 1
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _comparable(read_metrics(straight)) == _comparable(read_metrics(resumed))


def test_a_resumed_run_keeps_the_optimizer_path_it_started_with(tmp_path, env, stopped_run):
    """What impl=auto picks may change between versions (AdaRem's fused CPU path came and went); a
    run started on one path continues on it (another path rounds differently): the checkpoint's
    optimizer groups carry their foreach/fused flags, and run.json records the path that ran."""
    # AdaRem under auto on the CPU today: its fused kernel, or foreach where it cannot be built
    assert read_run(stopped_run)["optimizer_impl"] == ("fused" if cpu_kernel_error() is None else "foreach")
    assert read_run(stopped_run)["amp"] == "none"  # trainer.amp=auto on the CPU: fp32 (the tables read it)
    run_dir = copy_run(stopped_run, tmp_path / "run")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    for group in ckpt["optimizer"]["param_groups"]:
        group["foreach"], group["fused"] = False, None  # as if an older version's auto had chosen another path
    torch.save(ckpt, run_dir / "checkpoint.pt")
    res = run_train(["trainer.max_steps=4"], env, run_dir)  # one step more on the restored path
    assert res.returncode == 0, res.stderr
    assert read_run(run_dir)["optimizer_impl"] == "loop" and read_run(run_dir)["stopped_at_step"] == 4


def test_changed_config_in_same_dir_is_refused(tmp_path, env, stopped_run):
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    res = run_train(["optimizer.beta=0.5"], env, run_dir)
    assert res.returncode == 2
    assert "different config" in res.stderr and "optimizer.beta" in res.stderr


def test_divergence_is_a_result(tmp_path, env):
    run_dir = tmp_path / "run"
    res = run_train(["optimizer=sgd", "optimizer.lr=1e6", "trainer.log_every=1"], env, run_dir)
    assert res.returncode == 0
    assert "DIVERGED" in res.stderr and "step" in res.stderr
    run = read_run(run_dir)
    assert run["status"] == "diverged" and run["diverged_at_step"] >= 1
    lines = read_metrics(run_dir)  # every line parses
    assert lines[-1]["type"] == "diverged"


@pytest.mark.slow
def test_divergence_seen_by_one_rank_stops_every_rank(tmp_path, env):
    """Rank 1 alone records an absurd loss at step 5: both ranks must agree (collectively) that the
    run diverged at step 5, instead of rank 1 leaving while rank 0 waits in its next all-reduce; and
    rank 0, which writes the record, reports rank 1's loss (it wrote NaN)."""
    import time

    run_dir = tmp_path / "ddp"
    launcher = torchrun(2)
    t0 = time.monotonic()
    res = run_train(["trainer.log_every=1000"], dict(env, ADAREM_FAULT="huge_loss@5", ADAREM_FAULT_RANK="1"),
                    run_dir, launcher=launcher, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.monotonic() - t0 < 150
    run = read_run(run_dir)
    assert run["status"] == "diverged" and run["diverged_at_step"] == 5
    (line,) = [m for m in read_metrics(run_dir) if m["type"] == "diverged"]
    assert line["step"] == 5 and abs(line["loss"] / 1e30 - 1) < 1e-6  # float32


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, env):
    run_dir = tmp_path / "ddp"
    launcher = torchrun(2)
    # timed checkpoints every ~0.03 s: ranks must agree on when to take them, or they would hang
    res = run_train(["trainer.oscillation_every=4", "trainer.checkpoint_every_min=0.0005"], env, run_dir,
                    launcher=launcher)
    assert res.returncode == 0, res.stderr[-3000:]
    run = read_run(run_dir)
    assert run["status"] == "finished" and run["world_size"] == 2
    epochs = [m for m in read_metrics(run_dir) if m["type"] == "epoch"]
    assert epochs[-1]["val_samples"] == 359  # 180 + 179: each image once, none padded
    assert res.stdout.count("final top-1 error") == 1  # only rank 0 prints


@pytest.mark.slow
def test_two_ranks_train_the_run_one_process_trains(tmp_path, env):
    """The README's world-size invariance, end to end: with no BatchNorm and no dropout (timm's
    LayerNorm test_vit), 2 gloo ranks reading half of each global batch must train what one
    process trains: every step's global loss equal up to float summation order (the gradients
    are averaged over the ranks, not summed; the ranks' slices make up the same global batch, with
    the same augmentation) and every evaluation the same count of mistakes, to one image of a near-tie (each val image once)."""
    args = ["model.name=test_vit", "+model.kwargs.img_size=32", "optimizer=adarem", "trainer.log_every=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    res = run_train(args, env, one)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_train(args, env, two, launcher=torchrun(2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(two)["world_size"] == 2 and read_run(two)["bn_batch"] is None
    lines = {d: read_metrics(d) for d in (one, two)}
    iters = {d: [(m["step"], m["train_loss_window"]) for m in ms if m["type"] == "iter"] for d, ms in lines.items()}
    assert [s for s, _ in iters[one]] == [s for s, _ in iters[two]] == list(range(1, len(iters[one]) + 1))
    for (step, a), (_, b) in zip(iters[one], iters[two]):
        assert b == pytest.approx(a, rel=1e-4), (step, a, b)  # measured: within 1.1e-5 over 44 steps
    evals = {d: [(m["step"], m["val_top1_err"], m["val_samples"]) for m in ms if m["type"] == "epoch"]
             for d, ms in lines.items()}
    assert [(s, n) for s, _, n in evals[one]] == [(s, n) for s, _, n in evals[two]] and len(evals[one]) == 2
    for (_, a, n), (_, b, _) in zip(evals[one], evals[two]):  # measured equal; a near-tie may flip one image
        assert abs(a - b) <= 100 / n + 1e-9, (a, b)


@pytest.mark.slow
def test_two_ranks_stopped_and_resumed_train_the_uninterrupted_run(tmp_path, env):
    """Each rank draws its own dropout masks (seed + rank): a resume must restore every rank's own
    generator, loader position and optimizer state, not rank 0's on both. Stopped at step 30 of
    44 and resumed, 2 gloo ranks log every step's loss and every evaluation bit for bit as the
    uninterrupted run."""
    args = ["model.drop_rate=0.3", "optimizer=adarem", "trainer.log_every=1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    for extra, run_dir in (([], full), (["trainer.max_steps=30"], cut), ([], cut)):
        res = run_train(args + extra, env, run_dir, launcher=torchrun(2))
        assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(cut)["restarts"] == 1 and read_run(cut)["status"] == "finished"
    logged = {d: [(m["type"], m["step"], m.get("train_loss_window"), m.get("val_top1_err"))
                  for m in read_metrics(d) if m["type"] in ("iter", "epoch")] for d in (full, cut)}
    assert logged[full] == logged[cut] and len(logged[full]) == 44 + 2


def test_run_dir_given_on_the_command_line_is_where_the_log_goes(tmp_path, env):
    """run_dir=X left Hydra writing train.log into the config-derived runs/... folder (shared by
    every launch of the configuration, whatever its run_dir), and X had none."""
    from tests.conftest import FAST

    cmd = [sys.executable, str(REPO / "train.py"), *FAST, f"run_dir={tmp_path / 'mine'}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "mine" / "train.log").stat().st_size > 0 and (tmp_path / "mine" / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no runs/... folder beside it
    both = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'other'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert both.returncode == 2 and both.stderr.strip().endswith("name two run directories; give one of them")
