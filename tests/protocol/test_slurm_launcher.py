"""compare.py launcher=slurm end to end on stand-in SLURM commands (tests/protocol/slurm_stubs.py):
submitit's SlurmExecutor writes the job scripts, "sbatch" runs them on this machine, "sacct"
reports their states; each stage is one job array; relaunched, nothing finished is submitted."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, read_run
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
