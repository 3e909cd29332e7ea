"""A result in the tables is always the result of the configuration it claims: run identity,
stops after the last evaluation, two processes on one directory, resume from a foreign
checkpoint, datasets that share a name, torn metrics lines. All through the real command line."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import (DETERMINISTIC, FAST, REPO, copy_run, free_port, processes_with, read_metrics, read_run,
                            run_train, torchrun)


def _one_error_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def test_default_run_directory_carries_the_configuration_hash():
    text = (REPO / "configs" / "config.yaml").read_text()
    assert "_${run_id:}" in text.split("run:")[1].split("sweep:")[0]


def test_another_configuration_never_reuses_a_finished_run(tmp_path, env, finished_run):
    """The run-directory pattern ends in ${run_id:}: another config lands in another directory."""
    pattern = f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"
    # the FAST defaults with trainer.epochs=1, finished, in the directory the pattern names (the
    # relaunch of that configuration below finds it there)
    copy_run(finished_run, tmp_path / "runs" / read_run(finished_run)["run_id"])
    second = run_train(["trainer.epochs=1", "optimizer.weight_decay=0.05", "schedule=constant", pattern], env)
    assert second.returncode == 0, second.stderr
    assert "already finished" not in second.stdout
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2
    records = [read_run(d) for d in dirs]
    assert {r["run_id"] for r in records} == {d.name for d in dirs}
    assert {r["config"]["optimizer"]["weight_decay"] for r in records} == {1e-4, 0.05}
    # the same configuration again is reported, not retrained
    again = run_train(["trainer.epochs=1", pattern], env)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_explicit_directory_with_another_configuration_is_refused(tmp_path, env, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "run")  # trainer.epochs=1, finished
    before = (run_dir / "run.json").read_bytes()
    res = run_train(["trainer.epochs=1", "optimizer.weight_decay=0.05", "schedule=constant"], env, run_dir)
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "different configuration" in line and "optimizer.weight_decay" in line and "schedule.name" in line
    assert (run_dir / "run.json").read_bytes() == before


def test_stop_right_after_the_last_evaluation_keeps_the_final_result(tmp_path, env, deterministic_run):
    ref_dir, run_dir = deterministic_run, tmp_path / "run"
    common = DETERMINISTIC
    stopped = run_train(common, dict(env, ADAREM_FAULT="after_eval@1:TERM"), run_dir)
    # no step was left: the run finishes (tests/faults/test_late_signals.py); it was preempted
    assert stopped.returncode == 0, stopped.stderr
    assert read_run(run_dir)["status"] == "finished" and read_run(run_dir)["final"] == read_run(ref_dir)["final"]
    # as the previous version left it (preempted, its last checkpoint after the last evaluation):
    # the relaunch reports the final result that checkpoint holds
    record = read_run(run_dir)
    record.update(status="preempted", stop_reason="preempt", signal="SIGTERM",
                  stopped_at_step=record["steps_per_epoch"] * 2)
    record.pop("final")
    (run_dir / "run.json").write_text(json.dumps(record))
    resumed = run_train(common, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    final, ref = read_run(run_dir)["final"], read_run(ref_dir)["final"]
    assert math.isfinite(final["val_top1_err"]) and final == ref
    assert "nan" not in resumed.stdout


def test_second_process_on_a_live_run_directory_is_refused(tmp_path, env):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.epochs=1", "trainer.log_every=1",
           f"hydra.run.dir={run_dir}"]
    # the first process stops itself (SIGSTOP) after step 2, holding the lock, until the second
    # has been refused: no race with a first run that could finish before the second starts
    first = subprocess.Popen(cmd, cwd=REPO, env=dict(env, ADAREM_FAULT="step@2:STOP"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            if Path(f"/proc/{first.pid}/stat").read_text().split(") ")[1][0] == "T":  # stopped
                break
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[0][-2000:]
        second = run_train(["trainer.epochs=1"], env, run_dir)
        assert second.returncode == 2
        line = _one_error_line(second)
        assert "is in use by host" in line and f"pid {first.pid}" in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-2000:]
    lines = read_metrics(run_dir)
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [0]  # the first process ran to its end
    assert read_run(run_dir)["status"] == "finished"


def test_resume_from_a_checkpoint_of_another_configuration_is_refused(tmp_path, env, stopped_run):
    src = stopped_run  # trainer.max_steps=3 (exit 0); its checkpoint is only read
    res = run_train(["optimizer.lr=0.001", "schedule=constant", f"resume={src / 'checkpoint.pt'}"], env,
                    tmp_path / "run")
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "optimizer.lr" in line and "schedule.name" in line
    assert not (tmp_path / "run" / "run.json").exists()
    # the same configuration may start from it (and trains on from its step 3)
    ok = run_train([f"resume={src / 'checkpoint.pt'}", "trainer.max_steps=4"], env, tmp_path / "run2")
    assert ok.returncode == 0, ok.stderr
    assert read_run(tmp_path / "run2")["stopped_at_step"] == 4


def test_datasets_sharing_a_name_never_pool(tmp_path, env):
    from adarem.results import load_runs
    from adarem.results.tables import error_table

    args = ["data=folder", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4", "trainer.epochs=1"]
    for name, seed in (("a", 1), ("b", 2)):
        root = make_photo_tree(tmp_path / f"tree_{name}", classes=2, train_per_class=4, val_per_class=2,
                               size_range=(60, 90), seed=seed)
        res = run_train([*args, f"data.root={root}"], env, tmp_path / "runs" / name)
        assert res.returncode == 0, res.stderr
        assert read_run(tmp_path / "runs" / name)["data_identity"]["root"] == str(root)
    rs = load_runs(tmp_path / "runs")
    assert len(rs.runs) == 2 and rs.runs.config_id.nunique() == 2
    table = error_table(rs)
    assert len(table) == 2 and set(table.n) == {1}


def test_torn_metrics_line_is_cut_and_reported_on_resume(tmp_path, env):
    run_dir = tmp_path / "run"
    assert run_train(["trainer.max_steps=30"], env, run_dir).returncode == 0
    path = run_dir / "metrics.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-15])  # the last line loses its end: a torn write
    res = run_train(["trainer.max_steps=35"], env, run_dir)
    assert res.returncode == 0, res.stderr
    assert "fewer complete line(s)" in res.stderr
    for line in path.read_text().splitlines():
        json.loads(line)  # no torn line survives
    assert read_run(run_dir)["metrics_lines_lost"] == 1


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_signal_during_start_up_asks_for_a_requeue(tmp_path, env, sig):
    import signal

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # still importing torch
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped during start-up" in err
    assert not (run_dir / "run.json").exists() or read_run(run_dir)["status"] != "finished"


@pytest.mark.parametrize("loader", [[], ["data.loader=dali", "data.num_workers=2", "data.cache_samples=false"]],
                         ids=["torch", "dali"])
def test_ctrl_c_prints_one_line_and_marks_the_run_interrupted(tmp_path, env, loader):
    """A terminal's Ctrl-C reaches the whole foreground group: DALI's workers printed a
    KeyboardInterrupt traceback each, and their deaths were reported as possible out-of-memory
    kills (helper-93: 50-147 lines); they now leave it to the training process, as the torch
    loader's workers do."""
    import signal

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.epochs=5", "trainer.log_every=1", *loader,
           f"hydra.run.dir={run_dir}"]
    # a shell's background jobs (CI) inherit SIGINT ignored, and Python then keeps ignoring it:
    # give the child the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "epoch 0 step 2 " in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and "INFO" not in line]
    assert "Traceback" not in err and len(lines) == 1 and "interrupted (Ctrl-C)" in lines[0], err[-3000:]
    assert read_run(run_dir)["status"] == "interrupted"


def test_checkpoint_records_its_configuration(stopped_run):
    run_dir = stopped_run  # trainer.max_steps=3 (exit 0)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["optimizer"]["lr"] == read_run(run_dir)["config"]["optimizer"]["lr"]
    assert ckpt["position"]["final"] == {}


def test_resume_auto_refuses_a_checkpoint_of_another_configuration_without_run_json(tmp_path, env, stopped_run):
    """run.json moved away by hand: the checkpoint still says which configuration it belongs to."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    (run_dir / "run.json").rename(tmp_path / "run.json.bak")
    res = run_train(["optimizer=sgd", "optimizer.lr=0.5"], env, run_dir)
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "holds a checkpoint whose run" in line and "optimizer.lr" in line


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(tmp_path, env):
    run_dir = tmp_path / "ddp"
    res = run_train(["trainer.max_steps=3"], env, run_dir, launcher=torchrun(2))
    assert res.returncode == 0, res.stderr[-3000:]  # every worker exits 0: torchrun reports success
    assert read_run(run_dir)["status"] == "stopped" and read_run(run_dir)["world_size"] == 2
    res = run_train([], env, run_dir)
    assert res.returncode == 2
    assert "written by 2 process(es), this launch has 1" in _one_error_line(res)


@pytest.mark.parametrize("resume", ["never", "other checkpoint"])
def test_checkpoints_without_run_json_are_never_overwritten(tmp_path, env, stopped_run, resume):
    """run.json moved away (or lost): the directory's checkpoints and metrics are still a run's.
    resume=never, and resume=<a checkpoint of another directory>, refuse it in one line and leave
    every file as it was (was: checkpoints overwritten, metrics.jsonl cut to a foreign count)."""
    run_dir = copy_run(stopped_run, tmp_path / "run")
    (run_dir / "run.json").unlink()
    other = copy_run(stopped_run, tmp_path / "other") / "checkpoint.pt"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    arg = "resume=never" if resume == "never" else f"resume={other}"
    res = run_train(["trainer.max_steps=5", arg], env, run_dir)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "checkpoint.pt" in lines[0], res.stderr
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    # resume=<its own checkpoint> is a continuation, as resume=auto is
    own = run_train(["trainer.max_steps=5", f"resume={run_dir / 'checkpoint.pt'}"], env, run_dir)
    assert own.returncode == 0, own.stderr[-3000:]


@pytest.mark.parametrize("resume", ["auto", "never"])
def test_metrics_without_run_json_or_checkpoint_are_never_overwritten(tmp_path, env, resume):
    """A metrics.jsonl whose run.json was moved away and that has no checkpoint: resume=never
    refused it and advised resume=auto "to continue it", which started afresh and emptied the file
    without a word."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 0, "step": 11, "val_top1_err": 9.0}\n')
    res = run_train(["trainer.epochs=1", f"resume={resume}"], env, run_dir)
    assert res.returncode == 2, res.stderr[-3000:]
    line = _one_error_line(res)
    assert "holds metrics.jsonl but no run.json" in line and "move them away" in line, line
    assert "resume=auto to continue" not in line
    assert (run_dir / "metrics.jsonl").read_text().startswith('{"type": "epoch"')


@pytest.mark.parametrize("how", ["path", "auto without run.json"])
def test_checkpoint_of_another_device_type_is_not_continued(tmp_path, env, stopped_run, how):
    """The checkpoint records its device type and precision: a GPU bf16 checkpoint is not continued
    on CPU in fp32, also where no run.json says where it ran (resume=<path>, a record moved away)."""
    src = copy_run(stopped_run, tmp_path / "src")
    ckpt = torch.load(src / "checkpoint.pt", weights_only=False)
    assert ckpt["device"] == {"type": "cpu", "amp": "none"}
    ckpt["device"] = {"type": "cuda", "amp": "bf16"}
    torch.save(ckpt, src / "checkpoint.pt")
    if how == "path":
        run_dir, args = tmp_path / "new", [f"resume={src / 'checkpoint.pt'}"]
    else:
        (src / "run.json").unlink()
        run_dir, args = src, []
    res = run_train(args, env, run_dir)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "was trained on cuda with trainer.amp bf16" in lines[0], res.stderr
    assert not (run_dir / "run.json").exists()


def test_relaunch_at_max_steps_trains_nothing(tmp_path, env, stopped_run):
    """A relaunch at the limit the run stopped at (a requeue of a job preempted at that step, or
    the same command again) finds the run at max_steps and exits 0 without a step (was: one more
    step and 75 again per requeue, forever); a larger limit continues it, and stops there with 0."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    assert read_run(run_dir)["stop_reason"] == "max_steps"
    before = {name: (run_dir / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl", "run.json")}
    res = run_train(["trainer.max_steps=3"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nothing to train" in res.stderr
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert run_train(["trainer.max_steps=4"], env, run_dir).returncode == 0  # a larger limit continues
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["position"]["global_step"] == 4
    assert read_run(run_dir)["status"] == "stopped" and read_run(run_dir)["stopped_at_step"] == 4


def test_a_signal_at_the_limit_ends_the_run_as_the_limit_would(tmp_path, env, stopped_run):
    """A preemption that lands on trainer.max_steps's step leaves nothing to requeue for: exit 0,
    status stopped (was: exit 75 and, after the no-op requeue, status preempted for good). Landing
    on an epoch's last step, the run is requeued (75) and the relaunch evaluates that epoch before
    it stops at the limit (was: "nothing to train", the epoch never evaluated). A record an older
    version left preempted at the limit becomes stopped on relaunch."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    res = run_train(["trainer.max_steps=5"], dict(env, ADAREM_FAULT="step@5:TERM"), run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["stop_reason"], record["stopped_at_step"]) == ("stopped", "max_steps", 5)

    steps = record["steps_per_epoch"]
    res = run_train([f"trainer.max_steps={steps}"], dict(env, ADAREM_FAULT=f"step@{steps}:TERM"), run_dir)
    assert res.returncode == 75, res.stderr[-3000:]  # the epoch's evaluation is still owed
    assert read_run(run_dir)["status"] == "preempted"
    assert not [m for m in read_metrics(run_dir) if m["type"] == "epoch"]
    res = run_train([f"trainer.max_steps={steps}"], env, run_dir)  # the requeue
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["stop_reason"], record["stopped_at_step"]) == ("stopped", "max_steps", steps)
    epochs = [m for m in read_metrics(run_dir) if m["type"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [0] and "val_top1_err" in epochs[0]

    old = copy_run(stopped_run, tmp_path / "old")  # as an older version left it: preempted at step 3
    record = read_run(old)
    record.update(status="preempted", stop_reason="preempt", signal="SIGTERM")
    (old / "run.json").write_text(json.dumps(record))
    res = run_train(["trainer.max_steps=3"], env, old)
    assert res.returncode == 0 and "nothing to train" in res.stderr, res.stderr[-3000:]
    record = read_run(old)
    assert (record["status"], record["stop_reason"], record["stopped_at_step"]) == ("stopped", "max_steps", 3)


def test_max_steps_exits_0_and_a_signal_still_exits_75(tmp_path, env, stopped_run):
    """trainer.max_steps is a stop that was asked for: checkpoint, status stopped, exit 0 (no
    requeue), also where the limit is an epoch's last step (that epoch is evaluated, and no step of
    the next one is trained; was: one step more). A real preemption of a run that has a limit still
    exits 75 ("requeue me"), status preempted."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    steps = read_run(run_dir)["steps_per_epoch"]
    res = run_train([f"trainer.max_steps={steps}"], env, run_dir)  # epoch 0's last step
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["stop_reason"], record["stopped_at_step"]) == ("stopped", "max_steps", steps)
    assert record["signal"] is None and "requeue" not in res.stderr
    position = torch.load(run_dir / "checkpoint.pt", weights_only=False)["position"]
    assert (position["global_step"], position["epoch"], position["batch"]) == (steps, 1, 0)
    epochs = [m for m in read_metrics(run_dir) if m["type"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [0] and "val_top1_err" in epochs[0]
    res = run_train([f"trainer.max_steps={steps + 10}"], dict(env, ADAREM_FAULT=f"step@{steps + 2}:TERM"), run_dir)
    assert res.returncode == 75, res.stderr[-3000:]
    record = read_run(run_dir)
    assert (record["status"], record["stop_reason"], record["signal"], record["stopped_at_step"]) == \
        ("preempted", "preempt", "SIGTERM", steps + 2)
    # a lower limit given at the relaunch trains nothing, and does not turn that preemption (steps
    # were left under its limit) into a stop at a limit
    res = run_train([f"trainer.max_steps={steps + 1}"], env, run_dir)
    assert res.returncode == 0 and "nothing to train" in res.stderr, res.stderr[-3000:]
    assert read_run(run_dir)["status"] == "preempted"


def test_a_rank_killed_without_a_word_leaves_one_line_on_the_other(tmp_path, env):
    """A rank SIGKILLed (the out-of-memory killer) writes nothing: the other rank's collective
    fails, and that rank says so in one line instead of Hydra's traceback."""
    run_dir = tmp_path / "run"
    res = run_train(["trainer.epochs=1"], dict(env, ADAREM_FAULT="step@3", ADAREM_FAULT_RANK="1"), run_dir,
                    launcher=torchrun(2))
    assert res.returncode != 0
    assert "error: rank 0 stopped: it lost another rank during a collective" in res.stderr, res.stderr[-3000:]
    assert "Error executing job" not in res.stderr
    record = read_run(run_dir)
    assert record["status"] == "failed" and record["error"].startswith("PeerLost: rank 0 stopped: it lost another rank")


def test_a_rank_that_hangs_is_found_by_the_peer_watch_not_the_30_min_timeout(tmp_path, env):
    """A rank stopped (SIGSTOP: a hung process or node) keeps its sockets open, so the others' next
    gloo collective waits as NCCL's does for a dead peer: until the process group's 30-min
    timeout. Rank 0's peer watch finds the silent heartbeat and ends rank 0 in seconds, with one
    line, run.json failed and its loader workers gone; rank 2 names the same cause (from the error
    file the watch wrote for the silent rank). Launched as srun does, one process per rank."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.epochs=1", "trainer.batch_size=48",
           "data.num_workers=2", "trainer.peer_timeout_s=3", f"hydra.run.dir={run_dir}"]
    common = dict(env, WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  ADAREM_FAULT="step@3:STOP", ADAREM_FAULT_RANK="1")
    marker = f"ADAREM_TEST_RANK0={tmp_path.name}"
    t0 = time.monotonic()
    ranks = [subprocess.Popen(cmd, cwd=REPO, env=dict(common, RANK=str(r), LOCAL_RANK=str(r),
                                                      **({"ADAREM_TEST_RANK0": tmp_path.name} if r == 0 else {})),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1, 2)]
    try:
        _, err0 = ranks[0].communicate(timeout=180)
        took = time.monotonic() - t0
        time.sleep(1)
        left = processes_with(marker)  # rank 0's DataLoader workers
        _, err2 = ranks[2].communicate(timeout=60)
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert ranks[0].returncode == 2, err0[-3000:]
    assert took < 90, took  # start-up, 3 steps, 3 s of silence: not 30 min
    assert re.search(r"error: rank 0 stopped: rank 1 failed first \(no heartbeat for [34] s "
                     r"\(trainer.peer_timeout_s=3\): it was killed", err0), err0[-3000:]
    assert "Traceback" not in err0
    assert left == [], left
    record = read_run(run_dir)
    assert record["status"] == "failed"
    assert record["error"].startswith("rank 1: no heartbeat for"), record["error"]
    assert "(found by rank 0's peer watch) (rank 0 then stopped with it)" in record["error"]
    assert (run_dir / "rank0_error.txt").exists()
    assert ranks[2].returncode == 2, err2[-3000:]
    assert "error: rank 2 stopped: rank 1 failed first (no heartbeat for" in err2, err2[-3000:]


def test_ranks_that_see_other_run_directories_are_refused_not_left_waiting(tmp_path, env):
    """runs/ relative to a node-local working directory: rank 0 resumed from its checkpoint while
    rank 1, whose folder held nothing, started afresh; they then waited in different collectives
    until the 30-minute timeout (helper-84). Every rank now compares where it begins with rank 0."""
    first = tmp_path / "node0"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.epochs=1", "trainer.batch_size=48"]

    def launch(dirs, extra=()):
        common = dict(env, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        procs = [subprocess.Popen([*cmd, *extra, f"hydra.run.dir={d}"], cwd=REPO, env=dict(common, RANK=str(r),
                                  LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r, d in enumerate(dirs)]
        try:
            return [p.communicate(timeout=180) + (p.returncode,) for p in procs]
        finally:
            for p in procs:
                p.kill()

    stopped = launch([first, first], ["trainer.max_steps=3"])  # stopped at step 3, checkpointed
    assert [code for *_, code in stopped] == [0, 0], stopped[0][1][-2000:]
    t0 = time.monotonic()
    res = launch([first, tmp_path / "node1"], ["trainer.max_steps=3"])
    assert time.monotonic() - t0 < 90
    for _, err, code in res:
        assert code == 2, err[-2000:]
        assert "error: rank 1 sees another run directory than rank 0 (run.json absent, no checkpoint; rank 0: run.json " \
               "stopped, checkpoint " in err and "at step 3): every rank must read and write one shared hydra.run.dir" \
               in err, err[-2000:]


def test_ranks_that_read_other_data_are_refused():
    from adarem.config import ConfigError
    from adarem.run_setup import check_same_data

    same = {"name": "folder", "train_images": 1438, "train_sha1": "ab", "val_images": 359}
    check_same_data([same, dict(same)])
    with pytest.raises(ConfigError, match=r"rank 1 reads other data than rank 0 \(train_images 1418 \(rank 0: 1438\); "
                                          r"train_sha1 'cd' \(rank 0: 'ab'\)\): every rank must see the same data.root"):
        check_same_data([same, {**same, "train_images": 1418, "train_sha1": "cd"}])


def test_a_relaunch_preempted_during_start_up_marks_the_run_preempted(tmp_path, env):
    """helper-93: the relaunch of a run whose last segment was killed (status "running"), preempted
    before its first step, exited 75 and left "running": under torchrun (exit 1 for the workers'
    75) the documented requeue rule reads the record's status, and the run was never requeued."""
    run_dir = tmp_path / "run"
    killed = run_train(["trainer.epochs=2"], dict(env, ADAREM_FAULT="step@3"), run_dir)
    assert killed.returncode == -9 and read_run(run_dir)["status"] == "running", killed.stderr[-2000:]
    res = run_train(["trainer.epochs=2"], dict(env, ADAREM_FAULT="start@0:TERM"), run_dir)
    assert res.returncode == 75 and "stopped during start-up" in res.stderr, res.stderr[-2000:]
    record = read_run(run_dir)
    assert record["status"] == "preempted" and record["signal"] == "SIGTERM", record
    assert run_train(["trainer.epochs=2"], env, run_dir).returncode == 0  # the requeue
    record = read_run(run_dir)
    assert record["status"] == "finished"
    # the killed segment keeps its own end (helper-94: it took the start-up launch's preemption)
    assert record["segments"][0]["end_status"] == "running" and "signal" not in record["segments"][0], record
    assert len(record["segments"]) == 2
