"""Bad input to compare.py (adarem.protocol.cli.parse) and make_tables.py (--targets) that used to be
accepted: each is one ``error:`` line and exit 2 before any training or tabulating."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adarem.cli import tables
from adarem.protocol import cli
from tests.conftest import REPO


def compare(args, env, tmp_path):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={tmp_path / 'runs'}",
                           f"out={tmp_path / 'out'}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def parse_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    return err


def test_a_repeated_lr_grid_factor_is_refused_before_any_trial(env, tmp_path):
    # it used to exit 2 with "... is in use by another process", and again on every relaunch
    res = compare(["optimizers=sgd", "lr_grid=1,1", "trainer.epochs=1"], env, tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: lr_grid=1,1 repeats a factor (1)"), res.stderr
    assert res.stderr.count("\n") == 1 and "in use" not in res.stderr and "select" not in res.stdout
    assert not (tmp_path / "runs").exists()


def test_repeats_are_found_as_numbers(capsys):
    assert "lr_grid=0.1,1,0.1 repeats a factor (0.1)" in parse_error(["lr_grid=0.1,1,.1"], capsys)
    own, _ = cli.parse(["lr_grid=0.1,1,10"])
    assert own["lr_grid"] == [0.1, 1.0, 10.0]


def test_min_lr_above_an_lr_the_search_can_reach_is_refused(capsys):
    # sgd's default lr 0.1: the grid's lowest point 0.01; each extension divides by 10^0.5
    err = parse_error(["optimizers=sgd", "schedule.min_lr=0.005", "max_extend=1"], capsys)
    assert "schedule.min_lr=0.005 is above the lowest lr the search tries for sgd, 0.00316228" in err
    assert "max_extend=1 (extensions included)" in err
    cli.parse(["optimizers=sgd", "schedule.min_lr=0.005", "max_extend=0"])  # 0.01 is the lowest: fits
    cli.parse(["optimizers=sgd", "schedule.min_lr=0.005", "lr_grid=0.1,1"])  # a grid is never extended
    err = parse_error(["optimizers=sgd,adam", "schedule.min_lr=0.005", "max_extend=0"], capsys)
    assert "for adam, 0.0001 " in err  # adam's default lr is 1e-3
    cli.parse(["optimizers=sgd,adam", "schedule=step", "trainer.epochs=90", "schedule.min_lr=0.005"])  # unused
    cli.parse(["optimizers=sgd,adam"])  # min_lr 0: nothing composed per optimizer, nothing refused


@pytest.mark.parametrize("targets, says", [
    ("nan", "--targets=nan: nan is not a finite number >= 0"),
    ("inf", "--targets=inf: inf is not a finite number >= 0"),
    ("1,-2", "--targets=1,-2: -2 is not a finite number >= 0"),
    ("5,1", "--targets=5,1 must be increasing without repeats (the first, the smallest, is the claims' target), "
            "e.g. 1,5"),
    ("1,1", "--targets=1,1 must be increasing without repeats"),
])
def test_make_tables_refuses_bad_targets(tmp_path, capsys, targets, says):
    assert tables.main([str(tmp_path), f"--targets={targets}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err


def test_make_tables_accepts_increasing_finite_targets(tmp_path, capsys):
    # accepted: it goes on to read the (empty) runs folder and stops there, not at --targets
    assert tables.main([str(tmp_path), "--targets=0,0.5,2", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: no complete run under")


def test_make_tables_script_says_it_in_one_line(env, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(tmp_path), "--targets=inf",
                          "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: --targets=inf") and res.stderr.count("\n") == 1, \
        res.stderr
