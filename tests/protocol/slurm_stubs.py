"""Stand-ins for the SLURM commands submitit's SlurmExecutor calls (sbatch, srun, sacct, scancel,
scontrol), running each job on this machine. sbatch records the #SBATCH options of every script it
is given in $STUB_LOG, answers at once (as sbatch does) and runs the job, or each task of a job
array one after the other, in a detached process; the job states go to files in $STUB_STATE, where
sacct reads them. A job that ``scontrol requeue`` names while it runs is run again when it ends
(SLURM_RESTART_COUNT counts), as SLURM requeues it."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

SBATCH = r'''
import os, re, subprocess, sys, time
from pathlib import Path

state = Path(os.environ["STUB_STATE"])
state.mkdir(parents=True, exist_ok=True)


def run_job(jid, script, tasks, cwd):
    text = Path(script).read_text()
    folder = text.strip().splitlines()[-1].split()[-1]  # srun ... python -u -m submitit.core._submit <folder>
    for t in tasks:
        name = f"{jid}_{t}" if t is not None else str(jid)
        if (state / name).read_text() == "CANCELLED":
            continue
        pickle = Path(folder.replace("%j", name)) / f"{name}_submitted.pkl"
        for _ in range(300):  # submitit moves the pickle into place once sbatch has answered
            if pickle.exists():
                break
            time.sleep(0.1)
        restarts = 0
        while True:
            (state / name).write_text("RUNNING")
            env = dict(os.environ, SLURM_JOB_ID=str(jid if t is None else jid + 1 + t), SLURM_JOB_NODELIST="localhost",
                       SLURM_JOB_NUM_NODES="1", SLURM_NTASKS="1", SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=cwd,
                       SLURM_JOB_NAME="stub", SLURM_RESTART_COUNT=str(restarts))
            if t is not None:
                env.update(SLURM_ARRAY_JOB_ID=str(jid), SLURM_ARRAY_TASK_ID=str(t))
            code = subprocess.call(["bash", script], env=env, cwd=cwd)
            requeue = state / (name + ".requeue")  # "scontrol requeue" during the run: run it again
            if requeue.exists() and (state / name).read_text() != "CANCELLED":
                requeue.unlink()
                restarts += 1
                continue
            break
        if (state / name).read_text() != "CANCELLED":
            (state / name).write_text("COMPLETED" if code == 0 else "FAILED")


if os.environ.get("STUB_RUNNER"):
    jid, script, cwd, *tasks = sys.argv[1:]
    run_job(int(jid), script, [None if t == "-" else int(t) for t in tasks], cwd)
    sys.exit(0)

script = sys.argv[-1]
opts = [line.split(None, 1)[1] for line in Path(script).read_text().splitlines() if line.startswith("#SBATCH ")]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("sbatch " + " ".join(opts + sys.argv[1:-1]) + "\n")
counter = state / "next_id"
jid = int(counter.read_text()) if counter.exists() else 5000
counter.write_text(str(jid + 1000))
array = next((o.split("=", 1)[1] for o in opts if o.startswith("--array=")), None)
if array:
    lo, hi = re.match(r"(\d+)-(\d+)", array).groups()
    tasks = [str(t) for t in range(int(lo), int(hi) + 1)]
else:
    tasks = ["-"]
for t in tasks:
    (state / (str(jid) if t == "-" else f"{jid}_{t}")).write_text("PENDING")
subprocess.Popen([sys.executable, __file__, str(jid), script, os.getcwd(), *tasks], env=dict(os.environ, STUB_RUNNER="1"),
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
print(f"Submitted batch job {jid}")
'''

SRUN = r'''
import os, signal, subprocess, sys
args, opts = sys.argv[1:], {}
while args and args[0].startswith("--"):
    key = args.pop(0)
    if key in ("--output", "--error"):
        opts[key] = args.pop(0)
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("srun " + " ".join(sys.argv[1:]) + "\n")


def path(p):
    for k, v in (("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")), ("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")),
                 ("%j", os.environ["SLURM_JOB_ID"]), ("%t", "0")):
        p = p.replace(k, v)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return open(p, "a")


out = path(opts["--output"]) if "--output" in opts else None
err = path(opts["--error"]) if "--error" in opts else None
env = dict(os.environ, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_STEP_ID="0")
proc = subprocess.Popen(args, env=env, stdout=out, stderr=err)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
    signal.signal(s, lambda signum, frame: proc.send_signal(signum))
sys.exit(proc.wait())
'''

SACCT = r'''
import os, sys
from pathlib import Path
state = Path(os.environ["STUB_STATE"])
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("sacct " + " ".join(sys.argv[1:]) + "\n")
print("JobID|State|NodeList")
for p in sorted(state.iterdir()):
    if "." not in p.name and p.name.split("_")[0] in ids:
        print(f"{p.name}|{p.read_text()}|localhost")
'''

SCANCEL = r'''
import os, sys
from pathlib import Path
state = Path(os.environ["STUB_STATE"])
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("scancel " + " ".join(sys.argv[1:]) + "\n")
for jid in sys.argv[1:]:
    for p in state.glob(jid if "_" in jid else f"{jid}*"):
        if p.read_text() in ("PENDING", "RUNNING"):
            p.write_text("CANCELLED")
'''

SCONTROL = r'''
import os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("scontrol " + " ".join(sys.argv[1:]) + "\n")
if sys.argv[1:3] == ["show", "hostnames"]:
    print("localhost")
if sys.argv[1:2] == ["requeue"]:
    from pathlib import Path
    for jid in sys.argv[2].split(","):
        (Path(os.environ["STUB_STATE"]) / (jid + ".requeue")).write_text("")
'''


def install_submitit_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT), ("scancel", SCANCEL),
                       ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
