"""Run integrity, the leftovers of issue 10, through the real command line: schema growth keeps a
run's identity, a finished run is re-checked against its data, ${hydra:...} in keys outside the
identity, Ctrl-C during the imports, sweeps get the preflight checks, a locked run directory."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys

import pytest
import torch

from adarem import config as schema
from adarem.run.identity import ADDED_KEYS, run_id
from tests.conftest import FAST, REPO, copy_run, read_run, run_train

GROUPS = {"model": schema.ModelConfig, "optimizer": schema.OptimizerConfig, "data": schema.DataConfig,
          "schedule": schema.ScheduleConfig, "trainer": schema.TrainerConfig, "logging": schema.LoggingConfig}

# A stand-in for a key added after the first release, for as long as the registered ones are not
# in the schema yet: train.py runs with trainer.eval_every registered (neutral value 1, its default).
STAND_IN = "trainer.eval_every"
WITH_STAND_IN = [sys.executable, "-c",
                 "import runpy, sys; from adarem.run import identity as r; "
                 f"r.ADDED_KEYS[{STAND_IN!r}] = 1; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')"]


def _one_error_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def _in_schema(key: str) -> bool:
    group, name = key.split(".", 1)
    return name in {f.name for f in dataclasses.fields(GROUPS[group])}


def _without(config: dict, keys: list[str]) -> dict:
    """``config`` as a release before ``keys`` existed recorded it."""
    out = json.loads(json.dumps(config))
    for key in keys:
        group, name = key.split(".", 1)
        del out[group][name]
    return out


def _strip_recorded(run_dir, keys: list[str]) -> None:
    """Make run.json and every checkpoint look written before ``keys`` were added to the schema."""
    record = read_run(run_dir)
    record["config"] = _without(record["config"], keys)
    (run_dir / "run.json").write_text(json.dumps(record))
    for path in run_dir.glob("checkpoint*.pt"):
        ckpt = torch.load(path, weights_only=False)
        ckpt["config"] = _without(ckpt["config"], keys)
        torch.save(ckpt, path)


# Every registered key at once (a run of the first release lacks them all; one train.py run checks
# them together), and the stand-in through the registration mechanism itself.
IN_SCHEMA = [k for k in ADDED_KEYS if _in_schema(k)]
ADDED = [pytest.param(IN_SCHEMA, None, id="registered-keys"), pytest.param([STAND_IN], WITH_STAND_IN, id="stand-in")]


# --- 1. schema growth does not change a run's identity ---------------------------------------

def test_registered_keys_at_their_neutral_value_leave_the_hash_alone(finished_run):
    record = read_run(finished_run)  # trainer.epochs=1, finished; only read
    config = record["config"]
    for key, neutral in ADDED_KEYS.items():
        group, name = key.split(".", 1)
        old = {**config, group: {k: v for k, v in config[group].items() if k != name}}
        new = {**config, group: {**old[group], name: neutral}}
        assert run_id(old) == run_id(new) == record["run_id"], key
        other = (not neutral) if isinstance(neutral, bool) else 2 if neutral in (0, 1) else neutral + 1
        assert run_id({**config, group: {**old[group], name: other}}) != record["run_id"], key
        if isinstance(neutral, int) and not isinstance(neutral, bool):  # YAML/JSON may spell a number as a float
            assert run_id({**config, group: {**old[group], name: float(neutral)}}) == record["run_id"], key


@pytest.mark.parametrize("keys, launcher", ADDED)
def test_a_run_recorded_before_a_key_existed_resumes_in_the_same_directory(tmp_path, env, keys, launcher):
    """The directory name (${run_id:}) is the old one, resume=auto continues the run, and
    resume=<path> accepts its checkpoint; a non-neutral value of any of the keys is another
    configuration (all of them in one launch: the refusal names every key that differs)."""
    assert keys
    pattern = f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"
    first = run_train(["trainer.max_steps=3", pattern], env, launcher=launcher)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    _strip_recorded(run_dir, keys)
    assert run_dir.name == run_id(read_run(run_dir)["config"])  # the old release's hash is the same
    resumed = run_train(["trainer.max_steps=4", pattern], env, launcher=launcher)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "different configuration" not in resumed.stderr
    assert [d.name for d in (tmp_path / "runs").iterdir()] == [run_dir.name]
    record = read_run(run_dir)
    assert (record["status"], record["stopped_at_step"], record["restarts"]) == ("stopped", 4, 1)  # continued
    ok = run_train([f"resume={run_dir / 'checkpoint.pt'}", "trainer.max_steps=5"], env, tmp_path / "from_path",
                   launcher=launcher)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert read_run(tmp_path / "from_path")["stopped_at_step"] == 5
    others = []
    for key in keys:
        neutral = 1 if key == STAND_IN else ADDED_KEYS[key]
        # a bool's other value is true (2 would be refused as a wrong type, not as another configuration)
        others.append(f"{key}={'true' if isinstance(neutral, bool) else 2 if neutral in (0, 1) else neutral + 1}")
    refused = run_train(others, env, run_dir, launcher=launcher)
    assert refused.returncode == 2
    line = _one_error_line(refused)
    assert "different configuration" in line and all(key in line for key in keys), line


def test_without_the_registration_a_missing_key_is_a_difference(tmp_path, env, stopped_run):
    """What the table prevents: the same stripped run, resumed by code that does not know the key."""
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0)
    _strip_recorded(run_dir, [STAND_IN])
    res = run_train([], env, run_dir)
    assert res.returncode == 2
    assert "different configuration" in _one_error_line(res) and STAND_IN in res.stderr


# --- 2. a finished run is reported only for the data it was trained on ------------------------

def test_finished_run_reached_with_other_data_contents_is_refused(tmp_path, env):
    """Same configuration (same directory, same data.root), but the folder's contents changed:
    reporting the old result as this data's would be a silent wrong result."""
    import shutil

    from adarem.data.photo_tree import make_photo_tree

    root = make_photo_tree(tmp_path / "tree", classes=2, train_per_class=4, val_per_class=2, size_range=(60, 90))
    args = ["data=folder", f"data.root={root}", "data.image_size=32", "data.val_resize=36",
            "trainer.batch_size=4", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"]
    assert run_train(args, env).returncode == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    again = run_train(args, env)  # unchanged data: reported, not retrained
    assert again.returncode == 0 and "already finished" in again.stdout
    before = (run_dir / "run.json").read_bytes()
    train_dir = root / "train" / "class_000"
    for i in range(4):  # one more batch of training images (the identity counts samples per epoch)
        shutil.copy(train_dir / f"img_{i:04d}.JPEG", train_dir / f"img_{100 + i:04d}.JPEG")
    res = run_train(args, env)
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "dataset differs" in line and "train_samples" in line and "already finished" not in res.stdout
    assert (run_dir / "run.json").read_bytes() == before


# --- 3. ${hydra:...} in keys outside the identity ---------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("logging.group=${hydra:runtime.choices.optimizer}", lambda run_dir: "adarem"),  # was: HydraConfig was not set
    ("logging.group=${hydra:run.dir}", lambda run_dir: str(run_dir)),  # was: RecursionError
])
def test_hydra_interpolation_outside_the_identity(tmp_path, env, override, expected):
    pattern = f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"
    res = run_train(["trainer.epochs=1", override, pattern], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "error:" not in res.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = read_run(run_dir)
    assert record["config"]["logging"]["group"] == expected(run_dir)
    # outside the identity: the same directory as without the override
    plain = run_train(["trainer.epochs=1", pattern], env)
    assert plain.returncode == 0 and "already finished" in plain.stdout
    assert record["run_id"] == run_dir.name


def test_hydra_interpolation_in_an_identity_key_passes_preflight(tmp_path, env):
    """Preflight resolves ${hydra:...} as @hydra.main does (it used to stop with 'HydraConfig was
    not set', where Hydra itself runs it)."""
    pattern = f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"
    res = run_train(["trainer.epochs=1", "experiment_name=${hydra:runtime.choices.optimizer}", pattern], env)
    assert res.returncode == 0, res.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_run(run_dir)["config"]["experiment_name"] == "adarem"


# --- 4. Ctrl-C while train.py is still importing -----------------------------------------------

@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_during_the_imports_prints_one_line(tmp_path, env, delay):
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, f"hydra.run.dir={run_dir}"]
    # as a terminal's foreground job has it (a shell's background jobs inherit SIGINT ignored)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)  # 0.3 s: importing hydra/omegaconf; 1.5 s: importing torch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), err[-2000:]
    assert "Traceback" not in err + out
    assert not (run_dir / "run.json").exists()


# --- 5. sweeps (-m) get the preflight checks --------------------------------------------------

def _sweep(args, env, tmp_path, timeout=600):
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "logging.wandb=disabled", "logging.progress=none",
           "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["optimizer.lr=0.1,-1"], "optimizer.lr=-1.0 must be > 0"),  # a range check: the 2nd job, before the 1st runs
    (["optimizer.lrr=0.1,0.2"], "optimizer.lrr"),  # unknown key
    (["trainer.epochs=1,abc"], "trainer.epochs"),  # wrong type
    (["optimizer=sgd,nope"], "nope"),  # unknown option
    (["+trainer.no_such_key=1,2"], "trainer.no_such_key"),  # appended key, ignored by Hydra
    (["schedule.milestones=[3],[-3]", "schedule=step"], "schedule.milestones"),
    (["hydra.sweep.dir=/proc/adarem_sweep"], "cannot create or write the sweep directory"),
])
def test_bad_value_in_a_sweep_fails_before_any_job_with_one_line(tmp_path, env, args, says):
    res = _sweep(args, env, tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert says in _one_error_line(res)
    assert "Launching" not in res.stdout + res.stderr  # no job started
    assert not list(tmp_path.rglob("run.json"))


def test_a_good_sweep_still_runs_every_job(tmp_path, env):
    res = _sweep(["optimizer=sgd,adarem", "logging.group=${hydra:runtime.choices.optimizer}",
                  "hydra.sweep.subdir=${optimizer.variant}_${run_id:}"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    records = {p.parent.name: read_run(p.parent) for p in (tmp_path / "sweep").rglob("run.json")}
    assert {r["config"]["logging"]["group"] for r in records.values()} == {"sgd", "adarem"}
    assert all(r["status"] == "finished" and name.endswith(r["run_id"]) for name, r in records.items())


# --- 6. a locked run directory is a type, not a message ---------------------------------------

def _hold_lock(run_dir):
    import fcntl
    import os

    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"host test pid 1\n", 0)
    return fd


def test_run_lock_refusal_is_run_locked(tmp_path):
    import os

    from adarem.config import ConfigError
    from adarem.run.plan import RunLock, RunLocked

    tmp_path.mkdir(exist_ok=True)
    fd = _hold_lock(tmp_path)
    try:
        with pytest.raises(RunLocked, match="is in use by host test pid 1") as info:
            RunLock(tmp_path, enabled=True).acquire()
        assert isinstance(info.value, ConfigError)  # train.py: still one line, exit 2
    finally:
        os.close(fd)


@pytest.mark.slow
def test_compare_stops_on_a_locked_trial(tmp_path, env):
    """compare.py recognises the refusal by its type (RunLocked), not by its wording."""
    import csv
    import os
    from pathlib import Path

    args = [sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={tmp_path / 'runs'}",
            f"out={tmp_path / 'out'}", "optimizers=sgd", "seeds=1", "select_seeds=1", "lr_grid=1", "workers=1",
            "data=digits", "trainer.epochs=1", "trainer.log_every=1000"]
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "selection.csv")))
    trial = next(r["run_dir"] for r in rows if r["stage"] == "select")
    fd = _hold_lock(Path(trial))
    try:
        again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    finally:
        os.close(fd)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "is in use by another process" in again.stderr.strip().splitlines()[-1]
    assert "Traceback" not in again.stderr


def test_one_folder_spelled_three_ways_is_one_run(tmp_path, env):
    """data.root=/x/t, /x/t/ and t (from /x) trained three runs in three directories, which the
    tables then kept apart as three one-seed rows; the root is now normalised before it is hashed
    and recorded, so the later spellings find the finished run."""
    from adarem.data.photo_tree import make_photo_tree

    root = make_photo_tree(tmp_path / "tree", classes=2, train_per_class=4, val_per_class=2, size_range=(60, 90))
    common = ["data=folder", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4", "trainer.epochs=1",
              f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"]
    first = run_train([f"data.root={root}", *common], env)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_run(run_dir)["config"]["data"]["root"] == str(root)
    for spelling, cwd in ((f"{root}/", REPO), (f"{root.parent}//{root.name}", REPO), (root.name, root.parent)):
        cmd = [sys.executable, str(REPO / "train.py"), *FAST, f"data.root={spelling}", *common]
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "already finished" in res.stdout, (spelling, res.stderr[-2000:])
    assert [d.name for d in (tmp_path / "runs").iterdir()] == [run_dir.name]


def test_a_run_of_an_old_spelling_is_pointed_at(tmp_path, env):
    """A run recorded before data.root was normalised sits in the directory of its spelling's id:
    a relaunch with that spelling says where, instead of training beside it unannounced."""
    import shutil

    from adarem.data.photo_tree import make_photo_tree

    root = make_photo_tree(tmp_path / "tree", classes=2, train_per_class=4, val_per_class=2, size_range=(60, 90))
    common = ["data=folder", f"data.root={root}/", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4",
              "trainer.epochs=1", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}/runs/" + "${run_id:}"]
    assert run_train(common, env).returncode == 0
    (new_dir,) = (tmp_path / "runs").iterdir()
    record = read_run(new_dir)
    record["config"]["data"]["root"] = f"{root}/"  # as the old code recorded it, in its old-id directory
    old_dir = new_dir.with_name(run_id(record["config"], normalise=False))
    shutil.move(new_dir, old_dir)
    (old_dir / "run.json").write_text(json.dumps(record))
    res = run_train(common, env)
    assert f"note: {old_dir} holds a run of this configuration recorded with data.root={root}/" in res.stderr
