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


def test_min_lr_above_the_grid_is_refused_and_extensions_are_not_counted(capsys):
    # sgd's default lr 0.1: the grid's lowest point 0.01
    err = parse_error(["optimizers=sgd", "schedule.min_lr=0.02"], capsys)
    assert "schedule.min_lr=0.02 is above the lowest lr of the grid for sgd, 0.01 (lr_span=1, lr_step=0.5)" in err
    cli.parse(["optimizers=sgd", "schedule.min_lr=0.005", "max_extend=3"])  # extensions stop above it instead
    cli.parse(["optimizers=sgd,adamw", "schedule.min_lr=1e-5"])  # the reviewer's command: adamw's grid starts at 1e-4
    err = parse_error(["optimizers=sgd,adam", "schedule.min_lr=0.005"], capsys)
    assert "for adam, 0.0001 " in err  # adam's default lr is 1e-3
    assert "lr_grid=0.1,1" in parse_error(["optimizers=sgd", "schedule.min_lr=0.02", "lr_grid=0.1,1"], capsys)
    cli.parse(["optimizers=sgd,adam", "schedule=step", "trainer.epochs=90", "schedule.min_lr=0.005"])  # unused
    cli.parse(["optimizers=sgd,adam"])  # min_lr 0: nothing composed per optimizer, nothing refused


def test_warmup_lr_above_the_grid_is_refused_and_unused_without_warmup(capsys):
    err = parse_error(["optimizers=sgd", "schedule.warmup_epochs=1", "schedule.warmup_lr=0.02"], capsys)
    assert "schedule.warmup_lr=0.02 is above the lowest lr of the grid for sgd, 0.01" in err
    cli.parse(["optimizers=sgd", "schedule.warmup_lr=0.02"])  # no warm-up: warmup_lr is never used


def test_an_extension_below_min_lr_is_not_made_and_the_edge_is_flagged():
    from adarem.protocol.report import selection_table
    from adarem.protocol.search import Search, lr_factors, lr_floor
    from omegaconf import OmegaConf

    floor = lr_floor(OmegaConf.create({"name": "cosine", "min_lr": 0.005, "warmup_epochs": 0, "warmup_lr": 0}))
    assert floor == (0.005, "schedule.min_lr=0.005")
    own = {"lr_grid": [], "lr_span": 1.0, "lr_step": 0.5}
    srch = Search("sgd", 0.1, [0.0], lr_factors(own), 0.5, floor)
    for lr, wd in srch.trials():  # the best on the low edge, 0.01
        srch.results[(lr, wd, 1000)] = {"status": "finished", "err": 10 + lr, "loss": 1.0}
    assert srch.edge(srch.best([1000])[0]) == "low"
    assert srch.extend("low") is None and srch.extensions == 0 and min(srch.lrs) == pytest.approx(0.01)
    assert srch.blocked["low"] == "not extended below: the next lr 0.00316228 is under schedule.min_lr=0.005"
    assert srch.extend("high") == pytest.approx(1.0 * 10 ** 0.5)  # the other side is unaffected
    table = selection_table({"sgd": srch}, {"sgd": srch.best([1000])}, [1000], lr_factors(own))
    assert "**yes (low; not extended below: the next lr 0.00316228 is under schedule.min_lr=0.005)**" in table
    # with the floor below the next lr, the extension is made
    low = Search("sgd", 0.1, [0.0], lr_factors(own), 0.5, (0.003, "schedule.min_lr=0.003"))
    assert low.extend("low") == pytest.approx(0.01 / 10 ** 0.5) and not low.blocked["low"]
    warm = lr_floor(OmegaConf.create({"name": "step", "min_lr": 0.5, "warmup_epochs": 1, "warmup_lr": 0.002}))
    assert warm == (0.002, "schedule.warmup_lr=0.002")  # step ignores min_lr; a warm-up's start counts


def test_an_extension_above_the_lr_limit_is_not_made_and_the_edge_is_flagged():
    """train.py refuses optimizer.lr above LR_MAX (1e6): an upward extension past it used to be launched,
    refused, and stop the whole comparison midway (compare.py stops on a refused trial)."""
    from adarem.config import LR_MAX
    from adarem.protocol.report import edge_summary, selection_table
    from adarem.protocol.search import Search, lr_factors

    own = {"lr_grid": [], "lr_span": 1.0, "lr_step": 0.5}
    srch = Search("sgd", 1e5, [0.0], lr_factors(own), 0.5)  # 1e4 .. 1e6
    for lr, wd in srch.trials():  # the best on the high edge, 1e6
        srch.results[(lr, wd, 1000)] = {"status": "finished", "err": 10 - lr / LR_MAX, "loss": 1.0}
    assert srch.edge(srch.best([1000])[0]) == "high" and max(srch.lrs) == pytest.approx(LR_MAX)
    assert srch.extend("high") is None and srch.extensions == 0
    assert srch.blocked == {"low": "", "high": "not extended above: the next lr 3.16228e+06 is over optimizer.lr's limit 1e+06"}
    chosen = {"sgd": srch.best([1000])}
    assert "**yes (high; not extended above: the next lr 3.16228e+06 is over" in selection_table(
        {"sgd": srch}, chosen, [1000], lr_factors(own))
    assert edge_summary({"sgd": srch}, chosen) == [
        "sgd: the chosen lr 1e+06 is the highest tried (not extended above: the next lr 3.16228e+06 is over "
        "optimizer.lr's limit 1e+06)"]
    # one step lower, the extension to 1e6 itself is made
    below = Search("sgd", 1e5 / 10 ** 0.5, [0.0], lr_factors(own), 0.5)
    assert below.extend("high") == pytest.approx(LR_MAX) and not below.blocked["high"]
    # just above the limit: the message shows the lr as the trial would write it, never as equal to it
    above = Search("sgd", 316230.0, [0.0], [0.01, 0.1, 1.0], 0.5)
    assert above.extend("high") is None and "the next lr 1.00001e+06 is over" in above.blocked["high"]


def test_compare_dry_run_of_a_short_preset_run_is_accepted_with_a_note(env, tmp_path):
    """The reviewer's command, refused by the previous version: a 1-epoch smoke run of the 90-epoch
    step recipe. dry_run=true checks every optimizer's configuration as its trials would, launches nothing."""
    res = compare(["experiment=paper_resnet18", "trainer.epochs=1", "optimizers=sgd", "dry_run=true"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "note: schedule truncated at trainer.epochs=1: schedule.milestones [30, 60, 80] are at or beyond" in res.stderr
    assert "dry run:" in res.stdout and not (tmp_path / "runs").exists()
    bad = compare(["optimizers=sgd", "dry_run=maybe"], env, tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: dry_run='maybe' must be true or false\n"


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


@pytest.mark.slow
def test_a_refused_trial_stops_the_comparison(env, tmp_path):
    """A finished selection trial that this launch may not reuse (here: trained on 2 ranks, a
    BatchNorm model's other BN batch) was scored as the worst trial and the search went on without
    its lr; now compare.py stops with the refusal's one line."""
    import json

    args = ["optimizers=sgd", "lr_grid=1", "select_seeds=1", "seeds=1", "trainer.epochs=1"]
    first = compare(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (trial,) = (tmp_path / "runs" / "select").rglob("run.json")
    record = json.loads(trial.read_text())
    assert record["status"] == "finished" and isinstance(record["bn_batch"], int)
    record.update(world_size=2, bn_batch=record["bn_batch"] // 2)
    trial.write_text(json.dumps(record))
    again = compare(args, env, tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("error: trial refused: "), again.stderr[-2000:]
    assert "trained on 2 rank(s)" in again.stderr and again.stderr.count("\n") == 1
    assert not [line for line in again.stdout.splitlines() if line.startswith("  final ")]  # none on a partial search

    # the same trial stopped by 2 ranks: train.py refuses its checkpoint (a CheckpointError), which
    # was scored as the worst trial too
    import torch

    ckpt_path = trial.parent / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["per_rank"] = ckpt["per_rank"] * 2
    torch.save(ckpt, ckpt_path)
    record.update(status="stopped")
    trial.write_text(json.dumps(record))
    stopped = compare(args, env, tmp_path)
    assert stopped.returncode == 2 and stopped.stderr.startswith("error: trial refused: "), stopped.stderr[-2000:]
    assert "written by 2 process(es)" in stopped.stderr and stopped.stderr.count("\n") == 1
