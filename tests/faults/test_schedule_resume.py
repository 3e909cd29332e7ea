"""A run stopped under another version of adarem/schedule.py is never continued on that version's
schedule while its record claims this one's (adarem.run.checkpoint.check_same_schedule): the old-style
state dicts here are what the previous schedule code built (timm's create_scheduler_v2 with
warmup_prefix=True, its multistep decaying one step early), constructed from timm directly."""

from __future__ import annotations

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from adarem.run.checkpoint import CheckpointError, check_same_schedule
from adarem.config import ScheduleConfig
from adarem.schedule import build_scheduler
from tests.conftest import read_run, run_train


def sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def old_scheduler(sched, epochs, steps, warmup_epochs=0.0, **kw):
    """What adarem/schedule.py built before 4bb9ec6."""
    return create_scheduler_v2(sgd(), sched=sched, num_epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=0.0,
                               step_on_epochs=False, updates_per_epoch=steps, warmup_prefix=True, **kw)[0]


def test_the_reviewers_old_cosine_is_refused_naming_why():
    # cosine, 1 warm-up epoch, 3 epochs x 4 steps, stepped twice: loaded, it continued 0.075, 0.1,
    # 0.0983, ... 0.025 instead of ending at 0
    old = old_scheduler("cosine", 3, 4, warmup_epochs=1, min_lr=0.0)
    old.step_update(num_updates=1)
    old.step_update(num_updates=2)
    new = build_scheduler(ScheduleConfig(name="cosine", warmup_epochs=1), sgd(), 3, 4)
    with pytest.raises(CheckpointError) as err:
        check_same_schedule(old.state_dict(), new)
    msg = str(err.value)
    assert msg.startswith("the checkpoint's lr schedule differs from the one this code builds for its configuration "
                          "(t_initial: 12 in the checkpoint, 8 here;"), msg
    assert "first different lr after step 5" in msg and "finish it with that version, or start a new run" in msg
    assert "\n" not in msg


def test_the_old_multistep_is_refused():
    old = old_scheduler("multistep", 3, 4, decay_milestones=[1, 2], decay_rate=0.1)
    new = build_scheduler(ScheduleConfig(name="step", milestones=[1, 2]), sgd(), 3, 4)
    with pytest.raises(CheckpointError, match=r"decay_t: \[4, 8\] in the checkpoint, \[5, 9\] here.*after step 3"):
        check_same_schedule(old.state_dict(), new)


def test_same_code_and_an_equal_schedule_written_differently_are_accepted():
    new = build_scheduler(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.001), sgd(), 3, 4)
    again = build_scheduler(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.001), sgd(), 3, 4)
    again.step_update(num_updates=7)  # stepping changes nothing in the state
    check_same_schedule(again.state_dict(), new)
    # the old cosine without warm-up is the same schedule (its cycle_decay=0.1 is unused with one cycle)
    old = old_scheduler("cosine", 3, 4, min_lr=0.001)
    assert old.state_dict()["cycle_decay"] != new.state_dict()["cycle_decay"]
    check_same_schedule(old.state_dict(), build_scheduler(ScheduleConfig(name="cosine", min_lr=0.001), sgd(), 3, 4))
    # another lr: another schedule (what a changed optimizer.lr would give)
    with pytest.raises(CheckpointError, match="base_values"):
        check_same_schedule(new.state_dict(), build_scheduler(ScheduleConfig(name="cosine", warmup_epochs=1,
                                                                             min_lr=0.001), sgd(0.2), 3, 4))


def test_train_py_refuses_to_resume_a_run_stopped_under_the_old_schedule(tmp_path, env):
    """A real stopped run whose checkpoint holds the old code's schedule: resume=auto is refused in one
    line, exit 2, and the run directory's checkpoint is left as it was; with this code's schedule
    put back, the same resume finishes."""
    run_dir, args = tmp_path / "run", ["schedule.warmup_epochs=1", "trainer.deterministic=true"]  # FAST: 2 epochs
    first = run_train([*args, "trainer.max_steps=5"], env, run_dir)
    assert first.returncode == 0, first.stderr[-2000:]  # stopped at max_steps, checkpoint written
    assert read_run(run_dir)["status"] != "finished"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    built = ckpt["scheduler"]
    steps = built["warmup_t"]  # one warm-up epoch = one epoch of steps
    assert built["t_initial"] == steps  # this code: the cosine spans the second epoch
    old = old_scheduler("cosine", 2, steps, warmup_epochs=1, min_lr=0.0).state_dict()
    assert old["t_initial"] == 2 * steps  # the old code stretched it over warm-up + epochs
    torch.save(dict(ckpt, scheduler=old), run_dir / "checkpoint.pt")
    before = (run_dir / "checkpoint.pt").read_bytes()
    res = run_train(args, env, run_dir)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: ") and "the checkpoint's lr schedule differs" in lines[0], lines[0]
    assert f"t_initial: {2 * steps} in the checkpoint, {steps} here" in lines[0]
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    torch.save(dict(ckpt, scheduler=built), run_dir / "checkpoint.pt")
    done = run_train(args, env, run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_run(run_dir)["status"] == "finished"
