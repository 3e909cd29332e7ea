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


def test_help_into_a_closed_pipe_ends_without_a_traceback(env):
    """`--help | head` where head has gone: exit 1 (Python's advice for EPIPE), and no
    BrokenPipeError traceback from print() or from the exit's flush."""
    for script in ("train.py", "scripts/compare.py", "scripts/make_tables.py"):
        proc = subprocess.Popen([sys.executable, str(REPO / script), "--help"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
        assert "Traceback" not in err and "BrokenPipe" not in err, (script, err)
        assert code in (0, 1), (script, code, err)  # 0: argparse ignores an OSError while printing help
