"""compare.py launcher=slurm end to end on stand-in SLURM commands (tests/protocol/slurm_stubs.py):
submitit's SlurmExecutor writes the job scripts, "sbatch" runs them on this machine, "sacct"
reports their states; each stage is one job array; relaunched, nothing finished is submitted; a
trial preempted by submitit's signal checkpoints, is requeued and resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, read_metrics, read_run, submitit_job_pid
from tests.protocol.slurm_stubs import install_submitit_stubs

pytestmark = pytest.mark.slow
ARGS = ["launcher=slurm", "partition=debugq", "gpus_per_node=1", "cpus_per_task=1", "timeout_min=30",
        "optimizers=sgd", "lr_grid=0.3,1,3", "select_seeds=1", "seeds=1", "data=digits", "trainer.epochs=1",
        "trainer.log_every=1000"]


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
