"""What a resumed run records: the same metrics as an uninterrupted run (oscillation records
included), the provenance of every segment, and no field of an earlier stop once it finished."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from tests.conftest import copy_run, read_metrics, read_run, run_train

TIMING = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")
OSC = ["trainer.deterministic=true", "model.drop_rate=0.1", "trainer.epochs=2", "trainer.oscillation_every=5"]


def _comparable(run_dir):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def osc_reference(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("osc") / "reference"
    res = run_train(OSC, env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("fault", ["step@32", "step@29:TERM"])
def test_resume_mid_window_keeps_every_oscillation_record(tmp_path, env, osc_reference, fault):
    """Killed at step 32 (22 steps per epoch): the resume starts from the step-22 checkpoint, inside
    the window of steps 21-25; stopped by SIGTERM at step 29, inside the window 26-30. Both windows'
    records are written, equal to the uninterrupted run's, and so is everything else."""
    run_dir = tmp_path / "run"
    first = run_train(OSC, dict(env, ADAREM_FAULT=fault), run_dir)
    assert first.returncode in (-signal.SIGKILL, 75), first.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["oscillation"]["start"] is not None  # the checkpoint fell inside a window
    resumed = run_train(OSC, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _comparable(osc_reference), _comparable(run_dir)
    assert [m["step"] for m in got if m["type"] == "oscillation"] == list(range(5, 45, 5))
    assert got == want
    a = torch.load(osc_reference / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the final checkpoint of a finished run is never resumed into a window: it holds none
    assert "oscillation" not in torch.load(osc_reference / "checkpoint.pt", weights_only=False)


ONE = ["trainer.epochs=1"]


@pytest.fixture(scope="module")
def preempted_at_3(tmp_path_factory, env):
    """ONE preempted by SIGTERM after step 3 (exit 75). Read only: copy_run() it to change it."""
    run_dir = tmp_path_factory.mktemp("preempted") / "run"
    res = run_train(ONE, dict(env, ADAREM_FAULT="step@3:TERM"), run_dir)
    assert res.returncode == 75, res.stderr[-3000:]
    return run_dir


def test_every_segment_keeps_its_provenance_and_the_top_level_says_they_differ(tmp_path, env, preempted_at_3):
    """A run stopped after step 3 on one thread count and code, resumed on another: run.json keeps
    both segments, says the run is mixed, counts it dirty when any segment was, and the resume
    prints a note."""
    run_dir = copy_run(preempted_at_3, tmp_path / "run")
    record = read_run(run_dir)
    assert [s["start_step"] for s in record["segments"]] == [0] and record["mixed_provenance"] == []
    # the first segment ran on other, uncommitted code (what a checkout between two requeues does)
    record["segments"][0]["git"] = {"commit": "0" * 40, "dirty": True, "diff_sha1": "1" * 40}
    (run_dir / "run.json").write_text(json.dumps(record))
    resumed = run_train(ONE, dict(env, OMP_NUM_THREADS="2"), run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "note:" in resumed.stderr and "hardware.torch_threads 1 -> 2" in resumed.stderr
    assert "git.commit 0000000000 -> " in resumed.stderr
    record = read_run(run_dir)
    first_seg, second = record["segments"]
    assert first_seg["start_step"] == 0 and second["start_step"] == 3
    assert first_seg["hardware"]["torch_threads"] == 1 and second["hardware"]["torch_threads"] == 2
    assert first_seg["end_status"] == "preempted" and first_seg["stopped_at_step"] == 3
    assert {"git.commit", "hardware.torch_threads", "hardware.omp_num_threads"} <= set(
        record["mixed_provenance"])
    assert record["git"]["dirty"] is True  # part of the run was trained on uncommitted code
    assert record["status"] == "finished" and record["restarts"] == 1


def test_a_finished_record_keeps_no_field_of_an_earlier_stop(tmp_path, env, preempted_at_3):
    """Stopped by SIGTERM, then failed (a full disk, as mark_failed records it), then resumed to the
    end: the top level says finished and nothing else; the stops are in their segments."""
    run_dir = copy_run(preempted_at_3, tmp_path / "run")  # SIGTERM after step 3
    assert run_train(ONE, dict(env, ADAREM_FAULT="step@4:TERM"), run_dir).returncode == 75
    record = read_run(run_dir)
    assert record["status"] == "preempted" and record["signal"] == "SIGTERM" and record["stopped_at_step"] == 4
    record.update(status="failed", error="OSError: [Errno 28] No space left on device", end_time="2024-01-01")
    (run_dir / "run.json").write_text(json.dumps(record))
    res = run_train(ONE, env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    record = read_run(run_dir)
    assert record["status"] == "finished"
    for key in ("error", "signal", "stopped_at_step"):
        assert key not in record, key
    assert record["end_time"] != "2024-01-01"
    segs = record["segments"]
    assert [s.get("end_status") for s in segs] == ["preempted", "failed", None]
    assert segs[0]["signal"] == "SIGTERM" and segs[0]["stopped_at_step"] == 3
    assert segs[1]["error"].startswith("OSError") and segs[1]["stopped_at_step"] == 4
    assert [s["start_step"] for s in segs] == [0, 3, 4]


@pytest.fixture(scope="module")
def stopped_at_5(tmp_path_factory, env):
    """A run stopped at trainer.max_steps=5, whose checkpoint others start from (resume=<path>)."""
    run_dir = tmp_path_factory.mktemp("source") / "rA"
    res = run_train(ONE + ["trainer.max_steps=5"], env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_a_requeue_of_resume_path_continues_the_run_it_started(tmp_path, env, stopped_at_5):
    """resume=<path> into an empty directory, stopped; the identical command again (a requeue:
    slurm/train.sbatch keeps the user's resume=<path>) continues that directory's own run, with a
    note, instead of refusing it; another directory's checkpoint is still refused there."""
    ckpt, run_dir = stopped_at_5 / "checkpoint.pt", tmp_path / "rB"
    first = run_train(ONE + ["trainer.max_steps=8", f"resume={ckpt}"], env, run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    record = read_run(run_dir)
    assert record["resumed_from"] == {"path": str(ckpt.resolve()), "global_step": 5, "epoch": 0, "batch": 5,
                                      "phase": "train"}
    again = run_train(ONE + ["trainer.max_steps=10", f"resume={ckpt}"], env, run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "note:" in again.stderr and "continuing it from its own checkpoint at step 8" in again.stderr
    record = read_run(run_dir)
    assert [s["start_step"] for s in record["segments"]] == [None, 5, 8]
    assert record["stopped_at_step"] == 10 and record["resumed_from"]["global_step"] == 5
    shutil.copy(ckpt, tmp_path / "copy.pt")  # the same checkpoint under another path: not what started it
    other = run_train(ONE + ["trainer.max_steps=10", f"resume={tmp_path / 'copy.pt'}"], env, run_dir)
    assert other.returncode == 2 and "already holds" in other.stderr, other.stderr[-3000:]


def test_a_run_continued_from_a_checkpoint_records_the_checkpoints_provenance(tmp_path, env, stopped_at_5):
    """A checkpoint written on other code (its stored provenance) starts a run in a new directory:
    its segment comes first (from_checkpoint) and the run is mixed in git.commit, with a note; a
    checkpoint of an older version without provenance: mixed_provenance says "unrecorded"."""
    ckpt = torch.load(stopped_at_5 / "checkpoint.pt", weights_only=False)
    assert set(ckpt["provenance"]) == {"git", "versions", "hardware", "world_size", "mixed_provenance"}
    ckpt["provenance"]["git"] = {"commit": "0" * 40, "dirty": False}
    torch.save(ckpt, tmp_path / "other_code.pt")
    res = run_train(ONE + ["trainer.max_steps=7", f"resume={tmp_path / 'other_code.pt'}"], env, tmp_path / "a")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "git.commit 0000000000 -> " in res.stderr
    record = read_run(tmp_path / "a")
    first = record["segments"][0]
    assert first["from_checkpoint"] is True and first["git"]["commit"] == "0" * 40 and first["stopped_at_step"] == 5
    assert "git.commit" in record["mixed_provenance"] and len(record["segments"]) == 2
    del ckpt["provenance"]
    torch.save(ckpt, tmp_path / "older.pt")
    res = run_train(ONE + ["trainer.max_steps=7", f"resume={tmp_path / 'older.pt'}"], env, tmp_path / "b")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "records no provenance" in res.stderr
    record = read_run(tmp_path / "b")
    assert record["mixed_provenance"] == ["unrecorded"] and record["segments"][0]["provenance"] == "unrecorded"


def test_a_run_continued_from_another_directory_has_its_whole_curve_and_requeues(tmp_path, env, stopped_at_5):
    """helper-93: a resume=<path> run began with none of the lines logged before that checkpoint
    (counted lost, "cut or torn"), and the tables left the finished run out; its requeue, killed
    before its first checkpoint, was refused once it had logged lines, and the suggested
    resume=auto trained afresh from step 0 under a record still saying resumed_from."""
    from adarem.results import load_runs

    ckpt = stopped_at_5 / "checkpoint.pt"
    reference = tmp_path / "reference"
    assert run_train(ONE, env, reference).returncode == 0
    continued = tmp_path / "continued"
    res = run_train(ONE + [f"resume={ckpt}"], env, continued)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr[-3000:]
    assert _comparable(continued) == _comparable(reference)
    assert not read_run(continued).get("metrics_lines_lost")
    rs = load_runs(run_dirs=[continued])
    assert len(rs.runs) == 1 and not rs.problems and rs.runs.curve_gap.iloc[0] == "", rs.problems
    for how in (f"resume={ckpt}", "resume=auto"):  # the requeue of the same command, or resume=auto
        run_dir = tmp_path / f"killed_{how.split('=')[0]}{len(how)}"
        killed = run_train(ONE + [f"resume={ckpt}"], dict(env, ADAREM_FAULT="step@8"), run_dir)
        assert killed.returncode == -signal.SIGKILL and (run_dir / "metrics.jsonl").stat().st_size > 0
        again = run_train(ONE + [how], env, run_dir)
        assert again.returncode == 0, (how, again.stderr[-3000:])
        assert _comparable(run_dir) == _comparable(reference), how
        record = read_run(run_dir)
        assert record["status"] == "finished" and not record.get("metrics_lines_lost"), how
        assert [s["start_step"] for s in record["segments"]][-2:] == [5, 5], (how, record["segments"])


def test_a_restart_from_no_checkpoint_is_not_called_mixed(tmp_path, env):
    """helper-93: killed before its first checkpoint, then started again with other threads: the
    restart trains from step 0, yet the record called it mixed (hardware.torch_threads) and a note
    said its numbers may differ from an uninterrupted run's."""
    run_dir = tmp_path / "run"
    killed = run_train(ONE, dict(env, ADAREM_FAULT="step@3", OMP_NUM_THREADS="2"), run_dir)
    assert killed.returncode == -signal.SIGKILL
    res = run_train(ONE, dict(env, OMP_NUM_THREADS="1"), run_dir)
    assert res.returncode == 0 and "continues at step" not in res.stderr, res.stderr[-3000:]
    record = read_run(run_dir)
    assert record["mixed_provenance"] == [] and [s["start_step"] for s in record["segments"]] == [0, 0], record


def test_a_second_kill_after_a_cut_file_logs_no_line_twice(tmp_path, env):
    """helper-93: metrics.jsonl torn at its 4th line, the run resumed from its step-11 checkpoint
    (3 lines kept) and was killed at step 18 before its next checkpoint; the next resume cut the
    file back to the checkpoint's count in the old layout, into the killed segment's lines, and
    logged steps 12-18 twice (the tables then left the run out)."""
    run_dir = tmp_path / "run"
    args = ONE + ["trainer.log_every=1"]
    assert run_train(args + ["trainer.max_steps=11"], env, run_dir).returncode == 0
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    counted = len(lines)
    lines[3] = '{"type": "iter", "ste\n'  # torn
    path.write_text("".join(lines))
    killed = run_train(args, dict(env, ADAREM_FAULT="step@18"), run_dir)
    assert killed.returncode == -signal.SIGKILL
    assert read_run(run_dir)["metrics_cuts"][-1]["lines"] == 3
    res = run_train(args, env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [(m["type"], m.get("step")) for m in read_metrics(run_dir)]
    assert len(steps) == len(set(steps)), [s for s in steps if steps.count(s) > 1][:5]
    assert max(s for t, s in steps if t == "iter") == 22
    assert read_run(run_dir)["metrics_lines_lost"] == counted - 3


def test_resume_path_requeue_and_copy_respect_the_source_run(tmp_path, env):
    """helper-94: (1) the checkpoint a killed resume=<path> run started from was overwritten by its
    own run going on, and the requeue silently continued from the newer step under lines copied
    from the old; (2) lines the source run had lost before its checkpoint were not counted lost in
    the run continued from it, whose curve then passed for whole."""
    a, b = tmp_path / "A", tmp_path / "B"
    assert run_train(ONE + ["trainer.max_steps=5"], env, a).returncode == 0
    killed = run_train(ONE + [f"resume={a / 'checkpoint.pt'}"], dict(env, ADAREM_FAULT="step@8"), b)
    assert killed.returncode == -signal.SIGKILL
    assert run_train(ONE + ["trainer.max_steps=10"], env, a).returncode == 0  # A's checkpoint now at step 10
    again = run_train(ONE + [f"resume={a / 'checkpoint.pt'}"], env, b)
    assert again.returncode == 2 and "started from that file at step 5, and it now holds step 10" in again.stderr, \
        again.stderr[-3000:]
    # its resume=auto relaunch is refused alike, in the words the user typed (it named resume=<path>)
    auto = run_train(ONE + ["resume=auto"], env, b)
    assert auto.returncode == 2 and "resume=auto (the run in" in auto.stderr, auto.stderr[-3000:]
    assert "it now holds step 10" in auto.stderr and f"resume={a}" not in auto.stderr
    # (2) a source whose file was cut before its checkpoint
    a2, b2 = tmp_path / "A2", tmp_path / "B2"
    assert run_train(ONE + ["trainer.max_steps=3", "trainer.log_every=1"], env, a2).returncode == 0
    path = a2 / "metrics.jsonl"
    counted = len(path.read_text().splitlines())
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # one line left
    assert run_train(ONE + ["trainer.max_steps=5", "trainer.log_every=1"], env, a2).returncode == 0
    assert read_run(a2)["metrics_lines_lost"] == counted - 1
    res = run_train(ONE + ["trainer.max_steps=7", "trainer.log_every=1", f"resume={a2 / 'checkpoint.pt'}"], env, b2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_run(b2)["metrics_lines_lost"] == counted - 1
    steps = [(m["type"], m.get("step")) for m in read_metrics(b2)]
    assert len(steps) == len(set(steps))
