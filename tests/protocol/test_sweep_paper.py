"""slurm/sweep_paper.sh: one compare.py launcher=slurm per paper experiment, with the ImageNet
holdout; checked with a stand-in interpreter that records its arguments."""

from __future__ import annotations

import subprocess

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
