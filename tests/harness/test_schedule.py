"""The lr schedules (adarem/schedule.py) stepped through whole runs as the engine steps them, and the
checks that a schedule fits its run (adarem/config.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from timm.scheduler import create_scheduler_v2

from adarem.config import ConfigError, ScheduleConfig, register_configs, validate
from adarem.schedule import build_scheduler, truncation
from tests.conftest import REPO, read_metrics, run_train

register_configs()

LR = 0.1
S = 7  # steps per epoch


def lrs(cfg: ScheduleConfig, epochs: int, steps: int = S, lr: float = LR) -> list[float]:
    """f(0) .. f(N): the lr set before the first step and after each of the N steps, stepped as
    adarem.engine.train_epoch does (step_update(k) after optimizer step k). Step k runs at f(k - 1)."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_scheduler(cfg, opt, epochs, steps)
    out = [opt.param_groups[0]["lr"]]
    for k in range(1, epochs * steps + 1):
        opt.step()
        sched.step_update(num_updates=k)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_with_warmup_warms_up_then_decays_to_min_lr_when_the_run_ends():
    # 3 epochs, the first a warm-up from 0.01: warm-up over steps 1..7, the cosine over the 14 after
    f = lrs(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_lr=0.01, min_lr=0.002), epochs=3)
    assert len(f) == 3 * S + 1
    assert f[0] == pytest.approx(0.01)  # the first step's lr
    assert f[3] == pytest.approx(0.01 + 3 / 7 * (LR - 0.01))  # linear
    assert f[S] == pytest.approx(LR) and max(f) == pytest.approx(LR)  # warm-up ends at the peak
    assert f[S + 7] == pytest.approx((LR + 0.002) / 2)  # the cosine's midpoint: half way through the rest
    assert f[-2] == pytest.approx(0.002 + (LR - 0.002) / 2 * (1 + math.cos(math.pi * 13 / 14)))  # the last step's
    assert f[-1] == pytest.approx(0.002, abs=1e-12)  # min_lr exactly when the last step ends
    assert all(b <= a for a, b in zip(f[S:], f[S + 1:]))


def test_the_reviewers_case_and_the_presets_end_at_min_lr():
    # train.py schedule.warmup_epochs=1 trainer.epochs=2 used to end at 0.05, half the peak
    f = lrs(ScheduleConfig(name="cosine", warmup_epochs=1), epochs=2, lr=LR)
    assert f[S] == pytest.approx(LR) and f[-1] == pytest.approx(0.0, abs=1e-12)
    for experiment in ("paper_mobilenetv2", "paper_shufflenetv2"):  # 150 epochs, 5 of warm-up: ended at 1.2e-4
        cfg = make([f"experiment={experiment}", "optimizer=sgd"])
        assert cfg.schedule.warmup_epochs == 5 and cfg.trainer.epochs == 150
        f = lrs(cfg.schedule, cfg.trainer.epochs, steps=2, lr=cfg.optimizer.lr)
        assert f[10] == pytest.approx(cfg.optimizer.lr) and f[-1] == pytest.approx(cfg.schedule.min_lr, abs=1e-12)


def test_cosine_without_warmup_is_the_schedule_the_suite_always_used():
    """Without warm-up nothing changed: the committed results' runs were trained on this schedule."""
    cfg = ScheduleConfig(name="cosine", min_lr=0.001)
    f = lrs(cfg, epochs=4)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=LR)
    old, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=4, warmup_epochs=0.0, warmup_lr=0.0, min_lr=0.001,
                                 step_on_epochs=False, updates_per_epoch=S, warmup_prefix=True)
    expected = [opt.param_groups[0]["lr"]]
    for k in range(1, 4 * S + 1):
        old.step_update(num_updates=k)
        expected.append(opt.param_groups[0]["lr"])
    assert f == expected
    assert f[0] == LR and f[-1] == pytest.approx(0.001, abs=1e-12)


def test_step_milestones_count_from_the_start_and_decay_at_the_first_step_after_them():
    # 3 epochs, milestones after epochs 1 and 2, half an epoch of warm-up (ceil(3.5) = 4 steps)
    f = lrs(ScheduleConfig(name="step", milestones=[1, 2], decay_rate=0.1, warmup_epochs=0.5, warmup_lr=0.0), epochs=3)
    assert f[0] == 0.0 and f[2] == pytest.approx(LR / 2)
    assert f[4] == pytest.approx(LR)  # warm-up over steps 1..4; not counted before the milestones
    assert f[S - 1] == pytest.approx(LR)  # step 7, the last of epoch 1, still at the lr
    assert f[S] == pytest.approx(LR * 0.1)  # step 8, the first of epoch 2, decayed (torchvision's timing)
    assert f[2 * S - 1] == pytest.approx(LR * 0.1) and f[2 * S] == pytest.approx(LR * 0.01)
    assert f[-1] == pytest.approx(LR * 0.01)
    g = lrs(ScheduleConfig(name="step", milestones=[1, 2], decay_rate=0.1), epochs=3)  # no warm-up
    assert g[: S] == [LR] * S and g[S] == pytest.approx(LR * 0.1) and g[2 * S] == pytest.approx(LR * 0.01)


def test_constant_with_warmup_holds_the_lr_after_it():
    f = lrs(ScheduleConfig(name="constant", warmup_epochs=1, warmup_lr=0.0), epochs=2)
    assert f[0] == 0.0 and f[S:] == [pytest.approx(LR)] * (S + 1)


def make(overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "run_dir=/tmp/x"])
    return validate(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=0.01", "schedule.min_lr=0.5"], "schedule.min_lr=0.5 is above optimizer.lr=0.01"),
    (["optimizer.lr=0.01", "schedule.warmup_epochs=1", "schedule.warmup_lr=0.02"],
     "schedule.warmup_lr=0.02 is above optimizer.lr=0.01: the warm-up would lower the lr"),
    (["schedule=step", "optimizer.lr=0.01", "schedule.warmup_epochs=0.5", "schedule.warmup_lr=0.1",
      "schedule.milestones=[1]"], "schedule.warmup_lr=0.1 is above optimizer.lr=0.01"),
    (["schedule=step", "schedule.milestones=[]"], "schedule.milestones=[] never decays"),
    (["schedule=step", "trainer.epochs=10", "schedule.milestones=[2,5]", "schedule.warmup_epochs=2"],
     "must all be > schedule.warmup_epochs=2.0"),
    (["schedule=step", "trainer.epochs=10", "schedule.milestones=[5,3]"], "must be increasing epoch numbers"),
])
def test_a_schedule_that_does_not_fit_its_run_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        make(overrides)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_what_fits_is_accepted():
    make(["optimizer.lr=0.01", "schedule.min_lr=0.01"])  # min_lr = lr: a flat cosine, not a rise
    # step does not read min_lr, nor a schedule without a warm-up warmup_lr: refused as settings not read
    # (tests/harness/test_config.py), not as schedules that do not fit
    make(["schedule=step", "trainer.epochs=10", "schedule.milestones=[3,9]", "schedule.warmup_epochs=2.5"])
    make(["trainer.epochs=2", "schedule.warmup_epochs=1.5"])
    make(["optimizer.lr=0.01", "schedule.warmup_epochs=1", "schedule.warmup_lr=0.01"])  # a flat warm-up


@pytest.mark.parametrize("overrides, note", [
    # the reviewer's short runs of the presets, refused by the previous version
    (["data=digits", "schedule=step", "trainer.epochs=2"],
     "schedule truncated at trainer.epochs=2: schedule.milestones [30, 60, 80] are at or beyond trainer.epochs=2 and "
     "never decay the lr"),
    (["experiment=paper_mobilenetv2", "trainer.epochs=3"],
     "the warm-up (schedule.warmup_epochs=5) is cut when the run ends: the lr rises from schedule.warmup_lr only "
     "60% of the way to optimizer.lr; no cosine decay follows"),
    (["experiment=paper_resnet18", "trainer.epochs=1", "optimizer=sgd"], "[30, 60, 80] are at or beyond"),
    (["schedule=step", "trainer.epochs=10", "schedule.milestones=[3,10]"], "schedule.milestones [10] is at or beyond"),
    (["trainer.epochs=2", "schedule.warmup_epochs=2"], "rises from schedule.warmup_lr only 100% of the way"),
    (["experiment=paper_resnet50", "trainer.epochs=90"], None),  # the whole recipe: nothing to say
    (["experiment=paper_shufflenetv2"], None),
    (["schedule=step", "trainer.epochs=10", "schedule.milestones=[3,9]"], None),
])
def test_a_run_shorter_than_its_schedule_is_accepted_and_said_to_be_truncated(overrides, note):
    cfg = make(overrides)
    said = truncation(cfg.schedule, cfg.trainer.epochs)
    assert (said is None) if note is None else (note in said and "\n" not in said), said


def test_a_truncated_schedule_is_the_recipes_first_epochs_never_a_stretched_one():
    # a 5-epoch warm-up in a 3-epoch run keeps its slope: after 3 epochs the lr is 3/5 of the way
    f = lrs(ScheduleConfig(name="cosine", warmup_epochs=5, warmup_lr=0.0), epochs=3)
    g = lrs(ScheduleConfig(name="cosine", warmup_epochs=5, warmup_lr=0.0), epochs=150)  # the recipe
    assert f == g[: 3 * S + 1]
    assert f[-1] == pytest.approx(LR * 3 / 5) and all(b > a for a, b in zip(f, f[1:]))
    # a warm-up exactly as long as the run reaches the lr when the last step ends
    f = lrs(ScheduleConfig(name="cosine", warmup_epochs=2, warmup_lr=0.0), epochs=2)
    assert f[-1] == pytest.approx(LR) and f[-2] < LR
    # milestones 30/60/80 in 2 epochs: the 90-epoch recipe's first two epochs, a constant lr
    f = lrs(ScheduleConfig(name="step"), epochs=2)
    assert f == lrs(ScheduleConfig(name="step"), epochs=90)[: 2 * S + 1] == [LR] * (2 * S + 1)
    # one milestone inside, one beyond: the first fires at its epoch, the second never
    f = lrs(ScheduleConfig(name="step", milestones=[1, 5], decay_rate=0.1), epochs=3)
    assert f[S - 1] == LR and f[S:] == [pytest.approx(LR * 0.1)] * (2 * S + 1)


def test_train_py_refuses_min_lr_above_lr_in_one_line(env, tmp_path):
    res = run_train(["optimizer.lr=0.01", "schedule.min_lr=0.5"], env, tmp_path / "run")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: schedule.min_lr=0.5 is above optimizer.lr=0.01"), lines[0]


def test_train_py_with_warmup_ends_at_min_lr(env, tmp_path):
    """The reviewer's command: the warm-up ramps to the peak over epoch 0, the cosine decays to 0 over
    epoch 1. An epoch line's lr is the one its last step trained with (the optimizer holds the next
    step's by then): the warm-up's last step, 1/spe short of the peak, and the cosine's last, one step
    short of 0, which the schedule reaches after the last step."""
    res = run_train(["schedule.warmup_epochs=1"], env, tmp_path / "run")  # FAST: 2 epochs, adarem lr 0.1
    assert res.returncode == 0, res.stderr[-2000:]
    epochs = [m for m in read_metrics(tmp_path / "run") if m["type"] == "epoch"]
    spe = json.loads((tmp_path / "run" / "run.json").read_text())["steps_per_epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[0]["lr"] == pytest.approx(0.1 * (spe - 1) / spe)
    assert epochs[1]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * (spe - 1) / spe)))


def test_train_py_runs_a_short_smoke_run_of_a_step_recipe_and_says_it_is_truncated(env, tmp_path):
    """The reviewer's command, refused by the previous version: data=digits schedule=step trainer.epochs=2
    (milestones 30/60/80). It trains at the constant lr and says so once on stderr."""
    res = run_train(["data=digits", "schedule=step"], env, tmp_path / "run")  # FAST: trainer.epochs=2
    assert res.returncode == 0, res.stderr[-2000:]
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: schedule truncated")]
    assert notes == ["note: schedule truncated at trainer.epochs=2: schedule.milestones [30, 60, 80] are at or beyond "
                     "trainer.epochs=2 and never decay the lr (the recipe's first 2 epoch(s), as a smoke run; the full "
                     "schedule needs more epochs)"], res.stderr
    epochs = [m for m in read_metrics(tmp_path / "run") if m["type"] == "epoch"]
    assert [e["lr"] for e in epochs] == [pytest.approx(0.1), pytest.approx(0.1)]
    # ...and says it where the tables read it: run.json, and a flag in make_tables' report
    assert "note: " + json.loads((tmp_path / "run" / "run.json").read_text())["schedule_truncated"] == notes[0]
    from adarem.results import load_runs, write_report

    text = write_report(load_runs(tmp_path / "run"), tmp_path / "tables", None, "test")
    assert "(schedule) 1 run of adarem" in text and "schedule truncated at trainer.epochs=2" in text
    # a schedule that fits: no note (printed and recorded at the start; one step is enough)
    plain = run_train(["data=digits", "trainer.max_steps=1"], env, tmp_path / "cosine")
    assert plain.returncode == 0 and "note: schedule" not in plain.stderr, plain.stderr[-2000:]
    assert json.loads((tmp_path / "cosine" / "run.json").read_text())["schedule_truncated"] is None
