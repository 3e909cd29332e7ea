"""slurm/sweep_paper.sh: one compare.py launcher=slurm per paper experiment, with the ImageNet
holdout; checked with a stand-in interpreter that records its arguments, and with the real one and
compare.py's dry_run=true, which composes and checks every preset x optimizer configuration as its
trials would (a refused configuration fails the sweep) and submits nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_sweep_paper_runs_the_protocol_on_each_experiment(tmp_path, env):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\necho "$@"\n[ "$2" != experiment=paper_resnet50 ]\n')  # resnet50's compare fails
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(REPO / "slurm" / "sweep_paper.sh"), "trainer.epochs=1"], cwd=tmp_path,
                         env=dict(env, ADAREM_PYTHON=str(fake), LOGS=str(tmp_path / "logs"), SEEDS="5"),
                         capture_output=True, text=True, timeout=60)
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / "sweep_paper.sh")]).returncode == 0
    assert res.returncode == 1, res.stdout + res.stderr  # a failed experiment fails the sweep, after all ran
    for exp in ("paper_resnet18", "paper_resnet50", "paper_mobilenetv2", "paper_shufflenetv2"):
        args = (tmp_path / "logs" / f"compare_{exp}.log").read_text().split()
        assert args == ["scripts/compare.py", f"experiment={exp}", "launcher=slurm",
                        "optimizers=sgd,sgd_plain,adam,adamw,adarem,adarem_m,adarem_nodecay", "seeds=5", "select_seeds=2",
                        "data.holdout_fraction=0.01", "trainer.epochs=1"], args


def test_sweep_paper_configurations_are_accepted_by_the_real_compare(tmp_path, env):
    """The smoke run slurm/README.md documents (trainer.epochs=1 of 90- and 150-epoch recipes): every
    preset with every default optimizer must compose and pass train.py's checks; the previous schedule
    checks refused all four. A refused configuration exits 2, and the sweep with it."""
    logs = tmp_path / "logs"
    res = subprocess.run(["bash", str(REPO / "slurm" / "sweep_paper.sh"), "dry_run=true", "trainer.epochs=1",
                          f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}"], cwd=tmp_path,
                         env=dict(env, ADAREM_PYTHON=sys.executable, LOGS=str(logs)), capture_output=True, text=True,
                         timeout=600)
    texts = {p.name: p.read_text() for p in logs.glob("compare_*.log")}
    assert res.returncode == 0, (res.stdout, texts)
    assert len(texts) == 4
    for name, text in texts.items():
        assert "dry run: the arguments and every optimizer's configuration are accepted" in text, (name, text)
        assert "note: schedule truncated at trainer.epochs=1" in text, (name, text)
    # and a configuration that is refused fails the sweep, in one line per experiment
    bad = subprocess.run(["bash", str(REPO / "slurm" / "sweep_paper.sh"), "dry_run=true", "trainer.epochs=1",
                          "schedule.min_lr=0.05", f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}"],
                         cwd=tmp_path, env=dict(env, ADAREM_PYTHON=sys.executable, LOGS=str(logs),
                                                EXPERIMENTS="paper_mobilenetv2"),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stdout
    assert (logs / "compare_paper_mobilenetv2.log").read_text().startswith("error: schedule.min_lr=0.05 is above")


def test_sweep_paper_gives_each_experiment_its_own_report_folder_under_out(tmp_path, env):
    """out=X went to all four compare.py as it was: one folder, the last report to finish left in it."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\necho "$@"\n')
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(REPO / "slurm" / "sweep_paper.sh"), "out=/r/imagenet/", "trainer.epochs=1"],
                         cwd=tmp_path, env=dict(env, ADAREM_PYTHON=str(fake), LOGS=str(tmp_path / "logs")),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for exp in ("paper_resnet18", "paper_resnet50", "paper_mobilenetv2", "paper_shufflenetv2"):
        args = (tmp_path / "logs" / f"compare_{exp}.log").read_text().split()
        assert args[-2:] == [f"out=/r/imagenet/{exp}", "trainer.epochs=1"], args
