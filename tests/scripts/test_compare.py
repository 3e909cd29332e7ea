"""scripts/compare.py (the command line of adarem.protocol): the search protocol (grid, edge
extension, tie-breaking, worst-case scoring) and the real command line end to end (resumption,
identical results, exit codes)."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys

import pytest

from adarem.protocol import cli, search
from tests.conftest import REPO


def finished(err, loss=1.0):
    return {"status": "finished", "err": err, "loss": loss, "run_dir": "x", "seconds": 0}


def test_default_grid_spans_two_decades_in_half_decade_steps():
    own, _ = cli.parse([])
    f = search.lr_factors(own)
    assert len(f) == 5 and math.isclose(f[0], 0.1) and math.isclose(f[-1], 10.0)
    assert all(math.isclose(b / a, 10 ** 0.5) for a, b in zip(f, f[1:]))


def test_edge_best_is_extended_and_interior_best_is_not():
    s = search.Search("sgd", 0.1, [1e-4], search.lr_factors(cli.parse([])[0]), 0.5)
    for lr, err in zip(s.lrs, [50, 40, 30, 20, 10]):  # error keeps falling towards high lr
        s.results[(lr, 1e-4, 1000)] = finished(err)
    lr, wd, err, _ = s.best([1000])
    assert math.isclose(lr, 1.0) and s.edge(lr) == "high"
    new = s.extend("high")
    assert math.isclose(new, 10 ** 0.5) and len(s.lrs) == 6 and s.extensions == 1
    s.results[(new, 1e-4, 1000)] = finished(15)  # worse: the previous best is now interior
    lr, _, err, _ = s.best([1000])
    assert math.isclose(lr, 1.0) and s.edge(lr) == "" and err == 10


def test_ties_are_broken_by_holdout_loss_and_failures_score_worst():
    s = search.Search("adam", 1e-3, [0.0], [1, 10], 1.0)
    s.results[(1e-3, 0.0, 1000)] = finished(20, loss=0.9)
    s.results[(1e-2, 0.0, 1000)] = finished(20, loss=0.5)
    assert s.best([1000])[0] == 1e-2
    # a point counts only if every selection seed finished with a finite error
    s.results[(1e-2, 0.0, 1001)] = {"status": "diverged", "err": math.nan, "run_dir": "x", "seconds": 0}
    s.results[(1e-3, 0.0, 1001)] = finished(30, loss=1.0)
    lr, _, err, _ = s.best([1000, 1001])
    assert lr == 1e-3 and err == 25
    assert search.score({"status": "finished", "err": math.nan}) == math.inf
    assert search.score({"status": "failed"}) == math.inf


def test_help_lists_the_keys_and_bad_input_exits_2_with_one_line(env, capsys):
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *a], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    help_ = run("--help")
    assert help_.returncode == 0
    for key in ("optimizers=", "select_seeds=", "lr_grid=", "launcher=local", "partition=", "gpus_per_node=",
                "timeout_min=", "SLURM_ACCOUNT"):
        assert key in help_.stdout, key
    bad = run("--nope")
    assert bad.returncode == 2 and bad.stderr == "error: unknown option '--nope'; compare.py takes key=value " \
        "arguments (see --help)\n"
    # a value every trial's train() would refuse stops the comparison before its first trial
    for args, says in ((["+trainer.no_such_key=1"], "unknown config key(s) trainer.no_such_key"),
                       (["trainer.epochs=0"], "trainer.epochs=0 must be >= 1")):
        res = run("optimizers=sgd", *args)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and says in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1 and "select" not in res.stdout
    for args in (["launcher=cloud"], ["seeds=x"], ["lr_grid=1,-2"], ["launcher=slurm", "nodes=0"],
                 ["launcher=slurm", "mem_gb=lots"], ["lr_span=400"]):
        with pytest.raises(SystemExit) as exit_:
            cli.parse(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)


def _run(args, env, tmp_path, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={tmp_path / 'runs'}",
                           f"out={tmp_path / 'out'}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_compare_resumes_a_half_finished_comparison_with_identical_results(tmp_path, env):
    args = ["optimizers=sgd,adarem", "seeds=2", "select_seeds=2", "lr_span=0.5", "max_extend=1", "workers=2",
            "data=digits", "trainer.epochs=1", "trainer.deterministic=true"]
    first = _run(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "selection.csv")))
    select = [r for r in rows if r["stage"] == "select"]
    final = [r for r in rows if r["stage"] == "final"]
    # equal trials before extension, 2 selection seeds each, disjoint from the final seeds
    for opt in ("sgd", "adarem"):
        assert len({r["lr"] for r in select if r["optimizer"] == opt}) >= 3
    assert {r["seed"] for r in select} == {"1000", "1001"} and {r["seed"] for r in final} == {"0", "1"}
    chosen = {(r["optimizer"], r["lr"]) for r in select if r["chosen"] == "True"}
    assert len(chosen) == 2 and {(r["optimizer"], r["lr"]) for r in final} == chosen
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "## Provenance" in md and "## Hyperparameter selection" in md and "commit:" in md
    claims = (tmp_path / "out" / "claims.csv").read_text()

    # half-finished: one selection trial and one final run lost; the relaunch redoes only those
    shutil.rmtree(select[0]["run_dir"])
    shutil.rmtree(final[0]["run_dir"])
    again = _run(args, env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(csv.DictReader(open(tmp_path / "out" / "selection.csv"))) == rows
    assert (tmp_path / "out" / "claims.csv").read_text() == claims


@pytest.mark.slow
def test_compare_with_another_setting_never_reuses_runs(tmp_path, env):
    base = ["optimizers=sgd", "seeds=1", "select_seeds=1", "lr_grid=1", "data=digits", "trainer.log_every=1000"]
    assert _run([*base, "trainer.epochs=1"], env, tmp_path).returncode == 0
    # into the first one's out=: refused (its report would replace the other setting's)
    refused = _run([*base, "trainer.epochs=2"], env, tmp_path)
    assert refused.returncode == 2 and "holds the report of another comparison" in refused.stderr, refused.stderr
    assert _run([*base, "trainer.epochs=2", f"out={tmp_path / 'out2'}"], env, tmp_path).returncode == 0
    runs = sorted((tmp_path / "runs" / "final" / "sgd").iterdir())
    assert len(runs) == 2  # one per configuration, none reused
    # and the second report is made of the second invocation's runs only
    md = (tmp_path / "out2" / "tables.md").read_text()
    assert "from 1 complete runs" in md
    rows = list(csv.DictReader(open(tmp_path / "out2" / "test_error.csv")))
    assert len(rows) == 1 and rows[0]["epochs"] == "2"
