"""adarem.protocol without a cluster: the trial overrides and run directories (pinned: a comparison
started by an earlier version must be resumable by this one), the SLURM keys, and the SLURM
dispatcher's resumption (finished trials are not submitted again, failed ones are)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from adarem.protocol import cli, dispatch

# today's override list for one selection trial and one final run: a study running with them must
# find its run directories again. The digits defaults changed once (channels_last and BN statistics
# from 2 batches, for the main job's time); the user's-experiment base (the committed
# Fashion-MNIST study) has not changed since the search protocol landed.
PINNED_BASE = ["data=digits", "trainer.epochs=6", "data.holdout_fraction=0.25", "trainer.log_every=5",
               "trainer.channels_last=true", "trainer.bn_recalibrate=2",
               "logging.wandb=disabled", "logging.progress=none", "trainer.oscillation_every=10"]


def test_trial_overrides_and_run_directory_are_pinned():
    own, passthrough = cli.parse([])
    base = cli.trial_base(passthrough)
    assert base == PINNED_BASE
    evals = [f"trainer.evals_per_epoch={own['evals_per_epoch']}"]
    lr = 0.1 * 10 ** -0.5
    assert cli.trial_overrides(base, evals, Path("/r"), "sgd", lr, 1e-4, 1000, "select") == [
        *PINNED_BASE, "optimizer=sgd", "optimizer.lr=0.0316228", "optimizer.weight_decay=0.0001", "seed=1000",
        "data.eval_on=holdout", "run_dir=/r/select/sgd/lr0.0316228_wd0.0001_s1000_${run_id:}"]
    assert cli.trial_overrides(base, evals, Path("/r"), "adam", 1e-3, 0.0, 2, "final") == [
        *PINNED_BASE, "trainer.evals_per_epoch=4", "optimizer=adam", "optimizer.lr=0.001",
        "optimizer.weight_decay=0", "seed=2", "data.eval_on=val", "run_dir=/r/final/adam/lr0.001_wd0_s2_${run_id:}"]
    # a user's data/experiment choice replaces the digits defaults; the trial defaults stay unless given
    assert cli.trial_base(["experiment=fashion_mnist", "logging.progress=lines"]) == [
        "experiment=fashion_mnist", "logging.progress=lines", "logging.wandb=disabled", "trainer.oscillation_every=10",
        "trainer.bn_recalibrate=8"]
    # and the directory is that name plus the configuration's 10-character hash
    run_dir = dispatch.compose(cli.trial_overrides(base, evals, Path("/r"), "sgd", lr, 1e-4, 1000, "select")).run_dir
    assert re.fullmatch(r"/r/select/sgd/lr0\.0316228_wd0\.0001_s1000_[0-9a-f]{10}", run_dir), run_dir


def test_slurm_keys_default_to_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    monkeypatch.setenv("ADAREM_GPUS_PER_NODE", "4")
    own, passthrough = cli.parse(["launcher=slurm", "account=me", "mem_gb=64", "trainer.epochs=1"])
    assert passthrough == ["trainer.epochs=1"]
    params = dispatch.slurm_parameters(own)
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "me"
    assert params["gpus_per_node"] == 4 and params["tasks_per_node"] == 4 and params["mem_gb"] == 64
    assert params["timeout_min"] == 4320 and params["cpus_per_task"] == 10 and params["nodes"] == 1
    own, _ = cli.parse(["launcher=slurm", "partition=cpu", "gpus_per_node=0"])
    params = dispatch.slurm_parameters(own)
    assert params["slurm_partition"] == "cpu" and params["tasks_per_node"] == 1 and "mem_gb" not in params


class FakeJob:
    def __init__(self, job_id, result):
        self.job_id, self._result = job_id, result

    def done(self):
        return True

    def result(self):
        if isinstance(self._result, Exception):
            raise self._result
        return self._result

    def cancel(self, check=True):
        pass


def test_slurm_dispatcher_submits_only_unfinished_trials_and_reads_run_records(tmp_path, monkeypatch):
    base = cli.trial_base(["data=digits", "trainer.epochs=1"])
    trials = {name: cli.trial_overrides(base, [], tmp_path, "sgd", lr, 1e-4, 1000, "select")
              for name, lr in (("finished", 0.1), ("diverged", 0.2), ("failed", 0.3), ("missing", 0.4), ("died", 0.5))}
    dirs = {name: Path(dispatch.compose(o).run_dir) for name, o in trials.items()}
    for name, status in (("finished", "finished"), ("diverged", "diverged"), ("failed", "failed")):
        dirs[name].mkdir(parents=True)
        final = {"val_top1_err": 12.5, "val_loss": 0.4} if status == "finished" else {}
        (dirs[name] / "run.json").write_text(json.dumps({"status": status, "final": final}))
    submitted = []

    class FakeExecutor:
        def map_array(self, fn, args):
            assert isinstance(fn, dispatch.Trial) and hasattr(fn, "checkpoint")  # requeued on preemption
            submitted.extend(args)
            # the re-run failed trial finishes (its job writes run.json); the missing one raises in
            # train() (returned as an error); the last job dies without a result
            (dirs["failed"] / "run.json").write_text(json.dumps({"status": "finished", "final": {"val_top1_err": 9.0,
                                                                                                  "val_loss": 0.3}}))
            return [FakeJob("77_0", {"status": "finished"}),
                    FakeJob("77_1", {"status": "failed", "error": "bad data", "run_dir": str(dirs["missing"])}),
                    FakeJob("77_2", RuntimeError("job 77_2 was killed"))]

    d = dispatch.SlurmDispatcher(tmp_path / "submitit", {}, poll_s=0)
    monkeypatch.setattr(d, "_executor", lambda stage: FakeExecutor())
    out = dict(d.run("select", list(trials.items())))
    assert submitted == [trials["failed"], trials["missing"], trials["died"]]
    assert list(out) == list(trials)  # in the order given
    assert out["finished"]["status"] == "finished" and out["finished"]["err"] == 12.5
    assert out["diverged"]["status"] == "diverged" and math.isnan(out["diverged"]["err"])
    assert out["failed"]["status"] == "finished" and out["failed"]["err"] == 9.0
    assert out["missing"]["status"] == "failed" and out["missing"]["error"] == "bad data"
    assert out["died"]["status"] == "failed" and "killed" in out["died"]["error"]
    assert all(res["run_dir"] == str(dirs[name]) for name, res in out.items())

    # relaunched with everything finished: nothing is submitted
    for name in ("missing", "died"):
        dirs[name].mkdir(parents=True)
        (dirs[name] / "run.json").write_text(json.dumps({"status": "finished", "final": {"val_top1_err": 1.0}}))
    submitted.clear()
    monkeypatch.setattr(d, "_executor", lambda stage: pytest.fail("nothing should be submitted"))
    again = dict(d.run("select", list(trials.items())))
    assert {name: res["status"] for name, res in again.items()} == dict.fromkeys(trials, "finished") | {"diverged": "diverged"}


def test_slurm_dispatcher_refuses_a_trial_finished_meanwhile_at_another_world_size(tmp_path, monkeypatch):
    """A trial submitted unfinished that another launch finished on 2 ranks before its job started:
    the job's train.py only refuses it (check_finished_world_size), and the run record then says
    finished; the dispatcher refuses it too, not hand the 2-rank BatchNorm result to the selection."""
    base = cli.trial_base(["data=digits", "trainer.epochs=1"])
    overrides = cli.trial_overrides(base, [], tmp_path, "sgd", 0.1, 1e-4, 1000, "select")
    cfg = dispatch.compose(overrides)
    run_dir, batch = Path(cfg.run_dir), int(cfg.trainer.batch_size)

    class FakeExecutor:
        def map_array(self, fn, args):
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(json.dumps({"status": "finished", "world_size": 2, "bn_batch": batch // 2,
                                                          "final": {"val_top1_err": 9.0, "val_loss": 0.3}}))
            return [FakeJob("78_0", {"status": "failed", "error": "refused by train.py", "run_dir": str(run_dir)})]

    d = dispatch.SlurmDispatcher(tmp_path / "submitit", {"nodes": 1, "tasks_per_node": 1}, poll_s=0)
    monkeypatch.setattr(d, "_executor", lambda stage: FakeExecutor())
    [(_, res)] = list(d.run("select", [("t", overrides)]))
    assert res["status"] == "failed" and "err" not in res, res
    assert res["error"].startswith(f"{run_dir} holds a finished run trained on 2 rank(s) (BatchNorm batch "
                                   f"{batch // 2}); this launch has 1 (BatchNorm batch {batch}) (launcher=slurm: "
                                   f"1 node(s) x 1 task(s))"), res["error"]
