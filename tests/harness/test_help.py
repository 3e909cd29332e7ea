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


def test_print_only_commands_into_a_closed_pipe_end_like_cat(env):
    """`--help | head` where head has gone: the command ends by SIGPIPE, silently, as cat does. It
    printed a BrokenPipeError traceback (train.py, compare.py); Hydra's --cfg printed one of its own,
    --info one per line through logging, and argparse exited 0 (helper-68)."""
    import signal

    for args in (["train.py", "--help"], ["train.py", "--cfg", "job"], ["train.py", "--info"],
                 ["scripts/compare.py", "--help"], ["scripts/make_tables.py", "--help"]):
        proc = subprocess.Popen([sys.executable, str(REPO / args[0]), *args[1:]], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
        assert err == "" and code == -signal.SIGPIPE, (args, code, err)


def test_a_command_whose_reader_goes_away_exits_1_without_a_traceback(env, tmp_path):
    """Not a print-only command (a dry run prints its plan): Python's advice for EPIPE, exit 1, and
    no traceback from print() or from the exit's flush."""
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "compare.py"), "dry_run=true", "data=digits",
                             f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_print_only_arguments_as_argparse_reads_them():
    """Abbreviated long options and short ones with the value attached are Hydra's print-only flags
    too (--inf printed one logging error per line into a closed pipe, helper-69); no override,
    nor -m, is one: a training run keeps Python's handling of a closed stdout."""
    from adarem.cli import _print_only

    assert all(_print_only(a) for a in ["--help", "-h", "--inf", "--cf", "-cjob", "--cfg=job", "-sc", "--hydra-help"])
    assert not any(_print_only(a) for a in ["-m", "--multirun", "trainer.epochs=2", "optimizer.lr=-1", "data.root=-c",
                                            "hydra.mode=MULTIRUN", "--", "-"])
