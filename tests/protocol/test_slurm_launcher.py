"""compare.py launcher=slurm end to end on stand-in SLURM commands (tests/protocol/slurm_stubs.py):
submitit's SlurmExecutor writes the job scripts, "sbatch" runs them on this machine, "sacct"
reports their states; each stage is one job array; relaunched, nothing finished is submitted; a
trial preempted by submitit's signal checkpoints, is requeued and resumes."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adarem.protocol.search import score
from tests.conftest import REPO, read_metrics, read_run, submitit_job_pid
from tests.protocol.slurm_stubs import install_submitit_stubs

pytestmark = pytest.mark.slow
ARGS = ["launcher=slurm", "partition=debugq", "gpus_per_node=1", "cpus_per_task=1", "timeout_min=30",
        "optimizers=sgd", "lr_grid=0.3,1,3", "select_seeds=1", "seeds=1", "data=digits", "trainer.epochs=1",
        "trainer.log_every=1000", "trainer.device=cpu"]  # the stand-in cluster's "GPU" jobs run here, on the CPU


@pytest.fixture()
def slurm_env(tmp_path, env):
    install_submitit_stubs(tmp_path / "bin")
    e = dict(env, PATH=f"{tmp_path / 'bin'}:{env['PATH']}", STUB_LOG=str(tmp_path / "stub.log"),
             STUB_STATE=str(tmp_path / "slurm-state"), SLURM_ACCOUNT="acct42")
    for key in ("SLURM_PARTITION", "ADAREM_GPUS_PER_NODE", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        e.pop(key, None)
    return e


def _compare(tmp_path, env):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *ARGS, f"runs={tmp_path / 'runs'}",
                           f"out={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_compare_through_slurm_job_arrays_then_resume(tmp_path, slurm_env):
    res = _compare(tmp_path, slurm_env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (tmp_path / "stub.log").read_text().splitlines()
    sbatch = [line for line in log if line.startswith("sbatch ")]
    assert len(sbatch) == 2, log  # one submission per stage: the selection array, then the final run
    select, final = sbatch
    for opt in ("--partition=debugq", "--account=acct42", "--gpus-per-node=1", "--ntasks-per-node=1",
                "--cpus-per-task=1", "--time=30", "--signal=USR2@300", "--job-name=adarem-select"):
        assert opt in select.split(), (opt, select)
    assert "--array=0-2%3" in select.split()  # the 3 lrs x 1 selection seed, one array
    assert "--array" not in final and "--job-name=adarem-final" in final.split()
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in log)

    rows = list(csv.DictReader(open(tmp_path / "out" / "selection.csv")))
    assert [r["stage"] for r in rows].count("select") == 3 and [r["stage"] for r in rows].count("final") == 1
    assert all(r["status"] == "finished" for r in rows), rows
    for r in rows:  # the runs' own records, in the directories the protocol named
        record = read_run(Path(r["run_dir"]))
        assert record["status"] == "finished"
        assert record["config"]["data"]["eval_on"] == ("val" if r["stage"] == "final" else "holdout")
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "SLURM job arrays" in md and "## Hyperparameter selection" in md
    # what the runs were trained with, from their own records (the jobs', not compare.py's process)
    assert "- torch threads per CPU run: " in md and "- versions: python " in md
    assert "not at the code of this invocation" not in md and "not all trained with the versions" not in md

    # relaunched: every trial is finished, so nothing is submitted and the result is the same
    again = _compare(tmp_path, slurm_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line for line in (tmp_path / "stub.log").read_text().splitlines() if line.startswith("sbatch ")] == sbatch
    assert list(csv.DictReader(open(tmp_path / "out" / "selection.csv"))) == rows


def test_a_preempted_trial_checkpoints_is_requeued_and_resumes(tmp_path, slurm_env):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "compare.py"), "launcher=slurm", "gpus_per_node=0",
                             "optimizers=sgd", "lr_grid=1", "select_seeds=1", "seeds=1", "data=digits",
                             "trainer.epochs=3", "trainer.batch_size=16", "trainer.log_every=2", f"runs={runs}",
                             f"out={tmp_path / 'out'}"], cwd=REPO, env=slurm_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, run_dir = time.monotonic() + 300, None
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the selection trial's steps
        found = list((runs / "select").rglob("metrics.jsonl")) if (runs / "select").exists() else []
        if found and found[0].read_text().count('"type": "iter"') >= 3:
            run_dir = found[0].parent
            break
        time.sleep(0.1)
    assert run_dir is not None, proc.communicate()[0][-3000:]
    pid = submitit_job_pid(runs / "submitit")
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption (submitit's signal)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "scontrol requeue" in (tmp_path / "stub.log").read_text()  # submitit requeued the trial's job
    record = read_run(run_dir)
    assert record["status"] == "finished" and record["restarts"] == 1  # ... which resumed and finished
    steps = [m["step"] for m in read_metrics(run_dir) if m.get("type") == "iter"]
    assert steps == sorted(set(steps))  # no step lost or repeated in the record
    rows = list(csv.DictReader(open(tmp_path / "out" / "selection.csv")))
    assert [(r["stage"], r["status"]) for r in rows] == [("select", "finished"), ("final", "finished")]


def test_a_trial_finished_at_another_world_size_is_refused_by_both_launchers(tmp_path, monkeypatch):
    """A finished trial trained on 2 ranks (its BatchNorm normalised over batch / 2 images) is no
    result of a launch with 8 ranks per trial (launcher=slurm, gpus_per_node=8) nor of one with 1
    (launcher=local): train.py refuses it (adarem/run_setup.py check_finished_world_size), and the
    SLURM dispatcher, which reuses a finished trial without launching train.py, must too, instead
    of handing its error to the lr selection. Nothing is submitted: the run records are written by
    hand, and the stand-in sbatch would log any submission."""
    from adarem.protocol import cli, dispatch

    install_submitit_stubs(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "stub.log"))
    monkeypatch.setenv("STUB_STATE", str(tmp_path / "slurm-state"))
    for key in ("SLURM_PARTITION", "ADAREM_GPUS_PER_NODE", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    own, passthrough = cli.parse(["launcher=slurm", "gpus_per_node=8", "optimizers=sgd", "data=digits",
                                  "trainer.epochs=1"])
    base = cli.trial_base(passthrough)
    trials = {name: cli.trial_overrides(base, [], tmp_path / "runs", "sgd", lr, 1e-4, 1000, "select")
              for name, lr in (("other_world", 0.1), ("diverged_other_world", 0.2), ("same_world", 0.3),
                               ("no_batchnorm", 0.4), ("unrecorded_world", 0.5), ("on_the_cpu", 0.6))}
    batch = int(dispatch.compose(trials["other_world"]).trainer.batch_size)
    dirs = {name: Path(dispatch.compose(o).run_dir) for name, o in trials.items()}
    for name, status, world, bn in (("other_world", "finished", 2, batch // 2),
                                    ("diverged_other_world", "diverged", 2, batch // 2),
                                    ("same_world", "finished", 8, batch // 8), ("no_batchnorm", "finished", 2, None),
                                    ("unrecorded_world", "finished", None, None),
                                    ("on_the_cpu", "finished", 8, batch // 8)):
        record = {"status": status, "final": {"val_top1_err": 12.5, "val_loss": 0.4} if status == "finished" else {}}
        if world is not None:
            record.update(world_size=world, bn_batch=bn)
        if name == "on_the_cpu":  # fp32 on CPUs: these jobs train in bf16 on GPUs (train.py refuses it too)
            record["hardware"] = {"device": "cpu"}
        dirs[name].mkdir(parents=True)
        (dirs[name] / "run.json").write_text(json.dumps(record))

    d = dispatch.SlurmDispatcher(tmp_path / "runs" / "submitit", dispatch.slurm_parameters(own), poll_s=0)
    out = dict(d.run("select", list(trials.items())))
    assert not (tmp_path / "stub.log").exists()  # nothing submitted: each is reused or refused
    for name in ("other_world", "diverged_other_world"):
        res = out[name]
        assert res["status"] == "failed" and "err" not in res and not res["locked"], res
        status = "finished" if name == "other_world" else "diverged"
        assert res["error"] == (
            f"{dirs[name]} holds a {status} run trained on 2 rank(s) (BatchNorm batch {batch // 2}); this launch has 8 "
            f"(BatchNorm batch {batch // 8}) (launcher=slurm: 1 node(s) x 8 task(s)), which changes its result "
            f"(BatchNorm's batch, each rank's dropout masks, the order of the gradient sums): relaunch with 2 rank(s) "
            f"per trial (launcher=slurm with nodes x max(1, gpus_per_node) = 2), or give runs= a fresh folder for a "
            f"new comparison"), res["error"]
        assert math.isinf(score(res))  # the selection scores it as any failed trial
    assert out["on_the_cpu"]["status"] == "failed" and out["on_the_cpu"]["error"] == (
        f"{dirs['on_the_cpu']} holds a finished run trained on cpu; this launch trains on cuda (launcher=slurm: 1 "
        f"node(s) x 8 task(s)): give runs= a fresh folder per device type")
    # a model without BatchNorm at another world size: refused too (each rank's dropout masks, the
    # gradient sums' order; it was reused, helper-84), without a BatchNorm batch in the line
    assert out["no_batchnorm"]["status"] == "failed" and out["no_batchnorm"]["error"].startswith(
        f"{dirs['no_batchnorm']} holds a finished run trained on 2 rank(s); this launch has 8 (launcher=slurm"), \
        out["no_batchnorm"]
    # reused: trained at this world size, a record without world_size
    for name in ("same_world", "unrecorded_world"):
        assert out[name]["status"] == "finished" and out[name]["err"] == 12.5, (name, out[name])

    # the local launcher (one process per trial) refuses the same trial the same way, before train()
    local = dispatch.run_one(trials["other_world"], threads=1)
    assert local["status"] == "failed" and not local["locked"], local
    assert local["error"].startswith(f"{dirs['other_world']} holds a finished run trained on 2 rank(s) (BatchNorm "
                                     f"batch {batch // 2}); this launch has 1 (BatchNorm batch {batch}) "
                                     f"(launcher=local: one process per trial)"), local["error"]
    assert local["error"].endswith("relaunch with 2 rank(s) per trial (launcher=slurm with nodes x "
                                   "max(1, gpus_per_node) = 2), or give runs= a fresh folder for a new comparison")
