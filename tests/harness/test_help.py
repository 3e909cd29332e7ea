"""`train.py --help` lists what a user can choose, and nothing else."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_help_lists_choosable_options_only(env):
    res = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    groups = res.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "_schema" not in groups
    assert "optimizer: adam, adamw, adarem," in groups and "sgd_plain" in groups
