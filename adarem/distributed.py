"""Process-group set-up under torchrun, SLURM (srun, one task per GPU) or a single process."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from adarem.rendezvous import StartStopped, rendezvous  # noqa: F401 (StartStopped: train.py's)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# step ids of a job's batch script (SLURM_BATCH_SCRIPT: 0xfffffffb today, 0xfffffffe in older Slurm)
# and of salloc's interactive step (SLURM_INTERACTIVE_STEP): no srun task, where a site sets one at all
NOT_SRUN_STEPS = ("4294967291", "4294967294", "4294967290")


def _env_ranks() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's variables, else from SLURM's, else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID"))
        if step is None or step in NOT_SRUN_STEPS:
            # the job's batch script itself (sbatch sets SLURM_PROCID and SLURM_NTASKS there too; srun
            # adds SLURM_STEP_ID to each task's environment): one process would wait for the other
            # SLURM_NTASKS - 1 ranks in init_process_group, silently, for its 30-minute timeout
            from adarem.config import ConfigError

            raise ConfigError(f"SLURM_NTASKS={os.environ['SLURM_NTASKS']} but this process is the job's batch script, "
                              f"not one of its srun tasks (no SLURM_STEP_ID): start train.py with srun (as "
                              f"slurm/train.sbatch does), or with torchrun")
        # srun with one task per GPU (slurm/train.sbatch, or a submitit job): submitit's reading of
        # SLURM's variables (its node-list parser included) gives the ranks and the first node of
        # the allocation, for torch's env:// rendezvous. A MASTER_ADDR/MASTER_PORT the job set (e.g.
        # an interconnect hostname) wins; the default port stays outside Linux's ephemeral range.
        try:
            from submitit.slurm.slurm import SlurmJobEnvironment
        except ImportError:
            from adarem.config import ConfigError

            raise ConfigError("a multi-task SLURM run (SLURM_NTASKS > 1) needs submitit to map SLURM's ranks; "
                              "pip install 'adarem[slurm]'") from None
        job = SlurmJobEnvironment()
        os.environ.setdefault("MASTER_ADDR", job.hostnames[0])
        os.environ.setdefault("MASTER_PORT", str(default_master_port(int(os.environ.get("SLURM_JOB_ID", 0)))))
        rank, world, local = job.global_rank, job.num_tasks, job.local_rank
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        return rank, world, local
    return 0, 1, 0


def default_master_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job that sets none: 20000-31999, below Linux's ephemeral
    range, so that co-located jobs collide only when their ids differ by a multiple of 12,000 (and
    then the second one's rank 0 cannot listen and says so, and no rank joins the other job:
    ``adarem.rendezvous`` keys every rank by its job)."""
    return 20000 + job_id % 12000


def init_distributed(device_pref: str = "auto", start_timeout_s: float = 600.0, stopped=lambda: False) -> DistInfo:
    """This process's rank and device, and the process group joined (``stopped``: whether a stop
    signal has come, looked at while the ranks meet; ``StartStopped`` if it came first)."""
    rank, world, local = _env_ranks()
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from adarem.config import ConfigError

        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if use_cuda:
        # modulo: sites that bind one GPU per task show each task a single device (index 0)
        index = local % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        store = {} if under_torchrun else {"store": rendezvous(rank, world, start_timeout_s, stopped),
                                           "rank": rank, "world_size": world}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=dt.timedelta(minutes=30),
                                **store, **({"device_id": device} if use_cuda else {}))
    return DistInfo(rank, world, local, device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics): DDP broadcasts them
    only at the start of a training forward, so after the last step each rank holds its own."""
    if dist.is_available() and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_gather_object(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PeerLost(RuntimeError):
    """This rank stopped because another rank of the job ended: its collective failed."""


# What a gloo collective says when the rank at the other end of its TCP pair has gone (ended,
# crashed or was killed); the store's client raises DistNetworkError when rank 0, its server, has.
# NCCL does not raise for a dead peer: its watchdog aborts the process after the timeout.
_PEER_GONE = re.compile(r"Connection (?:reset|closed) by peer|Broken pipe|Connection refused")


def failed_first(first_error: str) -> str:
    """"rank r: <error>" -> "rank r failed first (<error>)": how a rank that stops for another names it."""
    return first_error.replace(": ", " failed first (", 1) + ")"


def lost_peer_error(exc: BaseException, rank: int, first_error: Optional[str]) -> Optional[PeerLost]:
    """The one-line PeerLost for an error raised in a collective because another rank ended, else
    None. ``first_error`` is "rank r: <error>" of the rank that failed first and said why (its
    error file), if any; without it (a rank killed by the out-of-memory killer leaves none) the
    line says so. Anything else this rank raised keeps its own traceback."""
    if not isinstance(exc, RuntimeError) or isinstance(exc, PeerLost) or not _raised_by_torch_distributed(exc):
        return None
    text = str(exc)
    found = _PEER_GONE.search(text)
    network = isinstance(exc, getattr(dist, "DistNetworkError", ()))
    if found is None and not network:
        return None
    said = found.group(0) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    if first_error is not None:
        return PeerLost(f"rank {rank} stopped: {failed_first(first_error)} [{said}]")
    return PeerLost(f"rank {rank} stopped: it lost another rank during a collective ({said}), and no rank "
                    "recorded why: one was killed (the out-of-memory killer says nothing) or crashed, or the "
                    "network failed; its own output, or the launcher's failure summary, names it")


# where a collective that lost its peer raises: torch.distributed's calls, DDP's forward and the
# gradient all-reduce inside backward (the autograd engine). A DataLoader's or DALI's re-raise of
# a worker's error may quote a socket error too: not this.
_COLLECTIVE_CALLERS = tuple(os.path.join("torch", d, "") for d in ("distributed", os.path.join("nn", "parallel"),
                                                                     "autograd"))


def _raised_by_torch_distributed(exc: BaseException) -> bool:
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and any(part in last.tb_frame.f_code.co_filename for part in _COLLECTIVE_CALLERS)
