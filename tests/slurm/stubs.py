"""Stand-ins for sbatch, srun and scontrol that run a job on this machine and record what
they were asked to do (in $STUB_LOG). Written out as executables by ``install_stubs``."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

SBATCH = r'''
import os, subprocess, sys
log = os.environ["STUB_LOG"]
with open(log, "a") as f:
    f.write("sbatch " + " ".join(sys.argv[1:]) + "\n")
script, args = sys.argv[1], sys.argv[2:]
env = dict(os.environ)
env.update(SLURM_JOB_ID=os.environ.get("STUB_JOB_ID", "4242"), SLURM_JOB_NODELIST="localhost",
           SLURM_JOB_NUM_NODES="1", SLURM_NTASKS=os.environ.get("STUB_NTASKS", "2"),
           SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=os.getcwd(), SLURM_JOB_NAME="adarem",
           SLURM_RESTART_COUNT=os.environ.get("STUB_RESTART", "0"))
sys.exit(subprocess.call(["bash", script, *args], env=env))
'''

SRUN = r'''
import os, signal, subprocess, sys
log = os.environ["STUB_LOG"]
cmd = [a for a in sys.argv[1:] if not a.startswith("--")]
n = int(os.environ.get("SLURM_NTASKS", "1"))
with open(log, "a") as f:
    f.write("srun " + " ".join(sys.argv[1:]) + "\n")
procs = []
for rank in range(n):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_STEP_ID="0")
    procs.append(subprocess.Popen(cmd, env=env))
with open(os.environ["STUB_LOG"] + ".pids", "w") as f:
    f.write("\n".join(str(p.pid) for p in procs))
def forward(signum, frame):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, forward)
codes = [p.wait() for p in procs]
sys.exit(max(codes, key=abs))
'''

SCONTROL = r'''
import os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write("scontrol " + " ".join(sys.argv[1:]) + "\n")
if sys.argv[1:3] == ["show", "hostnames"]:
    print("localhost")
'''


def install_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
