"""slurm/train.sbatch end to end with stand-in sbatch/srun/scontrol (1 node x 2 CPU ranks, gloo),
preemption by SIGUSR1 with requeue and exact resume; a Hydra multirun through submitit_local."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, REPO, read_metrics, read_run
from tests.slurm.stubs import install_stubs

pytestmark = pytest.mark.slow
ARGS = [*FAST, "trainer.epochs=2", "trainer.batch_size=16", "trainer.deterministic=true", "trainer.log_every=2"]


@pytest.fixture()
def slurm_env(tmp_path, env):
    install_stubs(tmp_path / "bin")
    e = dict(env, PATH=f"{tmp_path / 'bin'}:{env['PATH']}", STUB_LOG=str(tmp_path / "stub.log"),
             ADAREM_PYTHON=sys.executable, STUB_NTASKS="2")
    return e


def sbatch(args, env, **kw):
    return subprocess.Popen(["sbatch", str(REPO / "slurm" / "train.sbatch"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sbatch_preempt_requeue_resume_matches_uninterrupted(tmp_path, slurm_env):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "preempted"
    ref = sbatch([*ARGS, f"hydra.run.dir={ref_dir}"], dict(slurm_env, STUB_JOB_ID="100"))
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out[-3000:]
    assert read_run(ref_dir)["world_size"] == 2

    job = sbatch([*ARGS, f"hydra.run.dir={run_dir}"], slurm_env)
    seen = []
    for line in job.stdout:  # wait until rank 0 reports training steps, then preempt every rank
        seen.append(line)
        if "epoch 0 step 4 " in line:
            for pid in Path(slurm_env["STUB_LOG"] + ".pids").read_text().split():
                os.kill(int(pid), signal.SIGUSR1)
            break
    rest = job.communicate(timeout=300)[0]
    assert job.returncode == 0, "".join(seen) + rest[-3000:]  # the script requeued, then exited 0
    log = Path(slurm_env["STUB_LOG"]).read_text()
    assert "scontrol requeue 4242" in log
    assert "--signal=USR1" in (REPO / "slurm" / "train.sbatch").read_text()
    record = read_run(run_dir)
    assert record["status"] == "preempted" and record["signal"] in ("SIGUSR1", "peer")
    assert (run_dir / "checkpoint.pt").exists()

    again = sbatch([*ARGS, f"hydra.run.dir={run_dir}"], dict(slurm_env, STUB_RESTART="1"))
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-3000:]
    assert read_run(run_dir)["status"] == "finished" and read_run(run_dir)["restarts"] == 1
    a = torch.load(ref_dir / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda lines: [{k: v for k, v in m.items() if not k.endswith("_s")} for m in lines]  # noqa: E731
    assert strip(read_metrics(ref_dir)) == strip(read_metrics(run_dir))


def test_multirun_through_submitit_local(tmp_path, env):
    sweep = tmp_path / "sweep"
    res = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=local",
                          "optimizer=sgd,adarem", "trainer.epochs=1", "logging.wandb=disabled",
                          "logging.progress=none", f"hydra.sweep.dir={sweep}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = sorted(sweep.rglob("run.json"))
    assert len(records) == 2
    statuses = {read_run(p.parent)["config"]["optimizer"]["variant"]: read_run(p.parent)["status"] for p in records}
    assert statuses == {"sgd": "finished", "adarem": "finished"}


def test_slurm_ranks_come_from_slurm_variables_and_a_job_set_rendezvous_wins(monkeypatch):
    """srun's variables -> torch's env:// ones (submitit's node-list parser for the first node);
    a MASTER_ADDR the job exported (an interconnect name) is kept; an inherited SUBMITIT_EXECUTOR
    (e.g. from a submitit local job) does not change what a SLURM task is."""
    from adarem.distributed import _env_ranks

    # _env_ranks writes RANK, WORLD_SIZE, LOCAL_RANK and MASTER_* into os.environ: set first, so that
    # monkeypatch restores their absence (delenv of an absent key records nothing, and RANK=3 of
    # WORLD_SIZE=4 leaked into the next in-process train(), which waited for 3 ranks)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for key, value in dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_STEP_ID="0",
                           SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="123", SLURM_JOB_NODELIST="gpu[007-008]").items():
        monkeypatch.setenv(key, value)
    assert _env_ranks() == (3, 4, 1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu007", str(20000 + 123))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_ADDR", "gpu007-ib0")
    monkeypatch.setenv("MASTER_PORT", "40000")
    assert _env_ranks() == (3, 4, 1)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu007-ib0", "40000")


@pytest.mark.parametrize("argv, submitter", [
    (["-m", "hydra/launcher=slurm", "seed=0,1"], True),
    (["--multirun", "hydra/launcher=local"], True),
    (["-m", "seed=0,1"], False),  # Hydra's basic launcher: the jobs train in this process
    (["hydra/launcher=slurm"], False),  # no multirun: a run of its own
    ([], False),
])
def test_a_sweeps_submitter_keeps_the_default_sigterm(argv, submitter):
    """train.py -m hydra/launcher=slurm recorded SIGTERM for a train() it never runs, and so ignored
    it while it waited for its jobs: timeout -s TERM left it alive (helper-83)."""
    code = ("import signal, sys; sys.argv = ['train.py', *sys.argv[1:]]; from adarem.cli import early; "
            "early.install(); print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == str(submitter), res.stderr


@pytest.mark.parametrize("step", [None, "4294967291", "4294967294", "4294967290"])
def test_python_train_py_in_a_multi_task_batch_script_is_refused_not_left_waiting(monkeypatch, step):
    """sbatch --ntasks=4 running `python train.py` without srun: the batch script's one process took
    SLURM_PROCID=0 of SLURM_NTASKS=4 and waited silently in init_process_group for three ranks that
    never came (helper-84)."""
    from adarem.config import ConfigError
    from adarem.distributed import _env_ranks

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_ID", "SLURM_STEPID"):
        monkeypatch.setenv(key, "unset")  # restored to absent at the end, whatever _env_ranks writes
        monkeypatch.delenv(key)
    for key, value in dict(SLURM_PROCID="0", SLURM_NTASKS="4", SLURM_LOCALID="0", SLURM_JOB_ID="123",
                           SLURM_JOB_NODELIST="gpu007", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0").items():
        monkeypatch.setenv(key, value)
    if step is not None:
        monkeypatch.setenv("SLURM_STEP_ID", step)
    with pytest.raises(ConfigError, match=r"SLURM_NTASKS=4 but this process is the job's batch script, not one of "
                                          r"its srun tasks \(no SLURM_STEP_ID\): start train.py with srun"):
        _env_ranks()
