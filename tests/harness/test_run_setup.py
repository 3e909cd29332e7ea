"""Checks run_setup makes across ranks before the first step."""

from __future__ import annotations

import pytest

from adarem.config import ConfigError
from adarem.run_setup import check_same_optimizer_path


def test_ranks_on_different_optimizer_paths_are_refused_in_one_line():
    check_same_optimizer_path([("fused", None), ("fused", None)])
    check_same_optimizer_path([("foreach", None)])
    with pytest.raises(ConfigError) as err:
        check_same_optimizer_path([("fused", None), ("foreach", None)])
    message = str(err.value)
    assert "\n" not in message and "rank 1: foreach" in message and "optimizer.impl" in message


def test_a_rank_that_cannot_run_the_fused_kernel_is_refused_before_the_first_step():
    """A resumed run restores its fused groups from the checkpoint, so every rank reports "fused"
    even where the kernel cannot be built: the check asks whether each rank can actually step."""
    with pytest.raises(ConfigError, match=r"rank 1 cannot run AdaRem's fused CPU kernel.*no compiler"):
        check_same_optimizer_path([("fused", None), ("fused", "RuntimeError: no compiler")])


def test_the_optimizer_says_when_it_needs_the_missing_kernel(monkeypatch):
    import torch

    import adarem.optim.adarem as adarem_module
    from adarem import AdaRem
    from adarem.optim.factory import fused_cpu_kernel_missing

    w = torch.nn.Parameter(torch.ones(2))
    fused, plain = AdaRem([w], foreach=True), AdaRem([w], foreach=True)
    fused.param_groups[0].update(fused=True, foreach=None)  # as a checkpoint's groups restore it
    monkeypatch.setattr(adarem_module, "cpu_kernel_error", lambda: "RuntimeError: no compiler")
    assert fused_cpu_kernel_missing(fused) == "RuntimeError: no compiler"
    assert fused_cpu_kernel_missing(plain) is None
    assert fused_cpu_kernel_missing(torch.optim.SGD([w], lr=0.1)) is None


@pytest.mark.parametrize("name", ["mobilenetv2_100", "resnet18", "torchvision.shufflenet_v2_x1_0"])
def test_sync_batchnorm_conversion_keeps_the_model(name):
    """trainer.sync_bn's conversion: every BatchNorm layer becomes a SyncBatchNorm one, and the
    model computes the same (eval mode needs no process group). torch's own converter turned
    timm's BatchNormAct2d (MobileNetV2) into a plain SyncBatchNorm that drops the activation."""
    import torch

    from adarem.models import build_model, to_sync_batchnorm

    torch.manual_seed(0)
    model = build_model(name, 10, 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        synced = to_sync_batchnorm(model).eval()
        assert n_bn > 0 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == n_bn
        assert torch.equal(synced(x), want)


def test_a_finished_run_is_not_reported_for_another_world_size():
    from types import SimpleNamespace

    from adarem.config import ConfigError
    from adarem.run_setup import check_finished_world_size

    def run(world, previous, sync=False):
        return SimpleNamespace(plan=SimpleNamespace(previous=previous), dist=SimpleNamespace(world_size=world),
                               config=SimpleNamespace(trainer=SimpleNamespace(sync_bn=sync)), run_dir="runs/x")

    finished = {"status": "finished", "world_size": 1, "bn_batch": 64}
    check_finished_world_size(run(1, finished))
    check_finished_world_size(run(2, {"status": "finished"}))  # a record without world_size
    with pytest.raises(ConfigError, match="trained on 1 rank.*this launch has 2.*relaunch with 1"):
        check_finished_world_size(run(2, finished))
    # no BatchNorm: each rank's dropout masks (seed + rank) and the gradient sums' order still change
    # with the world size; it was reported as this launch's result (helper-84)
    with pytest.raises(ConfigError, match=r"trained on 1 rank\(s\); this launch has 2, which changes its result"):
        check_finished_world_size(run(2, {**finished, "bn_batch": None}))
    with pytest.raises(ConfigError, match="BatchNorm batch unrecorded"):  # a record from before bn_batch
        check_finished_world_size(run(2, {"status": "finished", "world_size": 1}))


RANK_DRAWS = """
import sys, torch, torch.distributed as dist
from adarem.protocol.dispatch import compose
from adarem.run_setup import create
from adarem.run.signals import StopFlag
run = create(compose(["model.drop_rate=0.5", "logging.wandb=disabled", "seed=7", "run_dir=" + sys.argv[1]]), StopFlag())
mask = torch.nn.Dropout(0.5)(torch.ones(64)) > 0  # what a dropout layer does to this rank's images
masks = [torch.zeros_like(mask) for _ in range(dist.get_world_size())] if dist.is_initialized() else [mask]
if dist.is_initialized():
    dist.all_gather(masks, mask)
    dist.destroy_process_group()
if not dist.is_initialized() and run.dist.is_main:
    print("masks", *("".join("1" if v else "0" for v in m.tolist()) for m in masks))
"""


@pytest.mark.slow
def test_each_rank_draws_its_own_dropout_masks(tmp_path, env):
    """Every rank was seeded with config.seed, so rank j's image i got rank 0's mask for image i:
    dropout noise correlated across the global batch. Rank 0 keeps a single process's stream."""
    import subprocess
    import sys

    from tests.conftest import REPO, torchrun

    script = tmp_path / "draws.py"
    script.write_text(RANK_DRAWS)
    outs = []
    for launcher in ([sys.executable], torchrun(2)):
        res = subprocess.run([*launcher, str(script), str(tmp_path / f"run{len(outs)}")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(next(line.split()[1:] for line in res.stdout.splitlines() if line.startswith("masks")))
    (single,), (rank0, rank1) = outs
    assert rank0 == single and rank1 != rank0


def test_the_first_failure_is_never_a_rank_that_only_lost_its_peers(tmp_path):
    """With 3+ ranks, a rank killed without a word leaves none; the survivors' PeerLost files came
    first, and one of them was named as the cause ("rank 1 failed first (PeerLost: ...)"). Ranks are
    compared as numbers (rank 10 after rank 2) when two files carry one time."""
    import os
    import time

    from adarem.run_setup import first_rank_error

    since = time.time() - 1
    (tmp_path / "rank1_error.txt").write_text("PeerLost: rank 1 stopped: it lost another rank")
    assert first_rank_error(tmp_path, since) is None
    for rank, text in ((10, "DataError: corrupt image a"), (2, "DataError: corrupt image b")):
        (tmp_path / f"rank{rank}_error.txt").write_text(text)
        os.utime(tmp_path / f"rank{rank}_error.txt", ns=(int(since * 1e9) + 10**8,) * 2)
    assert first_rank_error(tmp_path, since) == "rank 2: DataError: corrupt image b"
    assert first_rank_error(tmp_path, time.time() + 5) is None  # an earlier launch's files


def test_only_a_collective_that_lost_its_peer_is_said_as_such():
    """The words "Connection reset by peer" in a DataLoader's or DALI's re-raise of a worker's
    error are that error, kept with its traceback; raised inside torch.distributed they mean that
    another rank has gone."""
    from adarem.distributed import PeerLost, lost_peer_error

    def raised_in(filename: str) -> RuntimeError:
        try:
            exec(compile("raise RuntimeError('[pair.cc:545] Read error: Connection reset by peer. GLHF')",
                         filename, "exec"))
        except RuntimeError as exc:
            return exc

    collective = raised_in("/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py")
    line = lost_peer_error(collective, 0, "rank 1: DataError: corrupt image x")
    assert isinstance(line, PeerLost) and str(line) == (
        "rank 0 stopped: rank 1 failed first (DataError: corrupt image x) [Connection reset by peer]")
    assert "no rank recorded why" in str(lost_peer_error(collective, 0, None))
    for elsewhere in ("/venv/lib/python3.11/site-packages/torch/utils/data/_utils/__init__.py",
                      "/venv/lib/python3.11/site-packages/nvidia/dali/pipeline.py"):
        assert lost_peer_error(raised_in(elsewhere), 0, None) is None
    assert lost_peer_error(ValueError("Connection reset by peer"), 0, None) is None


def test_a_finished_run_reported_again_says_when_other_code_trained_it():
    """A relaunch after a code change reported the old run's error as "nothing to do", with no word
    that another commit trained it (the tables flag this; the console line did not)."""
    from adarem.run.record import git_info
    from adarem.run_setup import other_code_note

    now = git_info()
    if not now.get("commit"):
        pytest.skip("not a git checkout")
    note = other_code_note({"git": {"commit": "0123456789abcdef", "dirty": False}})
    assert note.startswith("; note: it was trained at 0123456789, this code is " + now["commit"][:10]), note
    assert other_code_note({"git": now}) == ""  # the same commit, and the same uncommitted changes if any
    if not now["dirty"]:
        assert other_code_note({"git": {**now, "dirty": True, "diff_sha1": "x"}}).startswith(
            f"; note: it was trained at {now['commit'][:10]} with uncommitted changes, this code is")
    assert other_code_note({}) == "" and other_code_note({"git": {"commit": None}}) == ""


def test_a_relative_data_root_under_hydra_job_chdir_is_the_launchs_folder(tmp_path, env):
    """hydra.job.chdir=true moves the process into the run directory before train() runs: a
    relative data.root was then read from there ("not a directory"), while the run id Hydra had
    resolved before the move named the launch's folder (helper-77)."""
    import subprocess
    import sys

    from adarem.data.digits import ensure_digits_tree
    from tests.conftest import FAST, REPO

    (tmp_path / "dg").symlink_to(ensure_digits_tree(), target_is_directory=True)
    args = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.epochs=1", "data=folder", "data.image_size=8",
            "data.in_chans=1", "data.mean=[0.5]", "data.std=[0.5]", "data.num_workers=0"]
    first = subprocess.run([*args, "data.root=dg", "hydra.job.chdir=true"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    # the same data, spelled absolute, without the move: the same run (one run directory, reported)
    again = subprocess.run([*args, f"data.root={tmp_path / 'dg'}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "run already finished" in again.stdout, again.stdout + again.stderr[-2000:]
    assert len(list((tmp_path / "runs").rglob("run.json"))) == 1
