"""What compare.py prints and writes is this comparison's, and true: its report reads exactly its
own finals, a failed report leaves out/ and the manifests as they were, ties in holdout error are
ties, weight decays on the edge are flagged, commits of reused trials are stated, the SLURM
launcher refuses finished runs of other data as train.py does, and arguments that would silently
change the protocol are refused or noted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adarem.protocol import cli, dispatch
from adarem.protocol.report import code_section, edge_summary, selection_table
from adarem.protocol.search import Search, weight_decays
from tests.conftest import REPO


def _refusal(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.compare(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


# --- ties (holdout errors are counts of mistakes) -------------------------------------------------

def test_equal_mistake_counts_are_a_tie_broken_by_the_loss():
    n = 360  # the digits holdout; engine.evaluate's percentage of wrong images
    e = lambda wrong: 100.0 * (1 - (n - wrong) / n)  # noqa: E731
    s = Search("sgd", 0.1, [0.0], [0.1, 1, 10], 0.5)
    lo, mid, hi = s.lrs
    # 57+59 and 56+60 wrong: the same mean error, 16.111111111111107 vs 16.11111111111111 in float
    for lr, wrong, loss in ((lo, (57, 59), 0.30), (mid, (56, 60), 0.20), (hi, (150, 150), 1.0)):
        for seed, w in zip((1000, 1001), wrong):
            s.results[(lr, 0.0, seed)] = dict(status="finished", err=e(w), loss=loss)
    assert s.point_score(lo, 0.0, [1000, 1001])[0] != s.point_score(mid, 0.0, [1000, 1001])[0]
    lr, _, _, loss = s.best([1000, 1001])
    assert lr == mid and loss == 0.20
    # a different number of mistakes is never a tie
    s.results[(lo, 0.0, 1000)] = dict(status="finished", err=e(56), loss=0.30)
    assert s.best([1000, 1001])[0] == lo


def test_selection_seeds_that_choose_differently_are_shown_with_the_runner_ups_margin():
    """The committed study's adarem_nodecay: seed 1000 alone picks 0.316, seed 1001 alone 1; their
    mean chose 0.316 by 0.025 points (1.5 holdout images), and the table said nothing of it."""
    s = Search("sgd", 0.1, [0.0], [0.1, 1, 10], 0.5)
    lo, mid, hi = s.lrs
    for lr, errs in ((lo, (9.0, 9.5)), (mid, (8.0, 9.2)), (hi, (8.9, 8.4))):
        for seed, err in zip((1000, 1001), errs):
            s.results[(lr, 0.0, seed)] = dict(status="finished", err=err, loss=err / 10)
    chosen = {"sgd": s.best([1000, 1001])}
    assert chosen["sgd"][0] == mid
    row = next(line for line in selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10]).splitlines()
               if line.startswith("| sgd"))
    assert "| **s1000: 0.1, s1001: 1** | 1 (+0.05) |" in row, row
    for seed in (1000, 1001):  # agreeing seeds
        s.results[(hi, 0.0, seed)] = dict(status="finished", err=9.9, loss=0.99)
    row = next(line for line in selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10]).splitlines()
               if line.startswith("| sgd"))
    assert "| same | 0.01 (+0.65) |" in row, row


# --- search=lr_wd: a weight decay on the edge of its grid -----------------------------------------

def test_a_weight_decay_on_the_edge_of_its_grid_is_flagged():
    wds = weight_decays(5e-4, "lr_wd")
    s = Search("sgd", 0.1, wds, [0.1, 1, 10], 0.5)
    for lr, wd in s.trials():
        err = 10.0 if (lr == 0.1 and wd == max(wds)) else 20.0
        for seed in (1000, 1001):
            s.results[(lr, wd, seed)] = dict(status="finished", err=err, loss=err / 10)
    chosen = {"sgd": s.best([1000, 1001])}
    table = selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10])
    row = next(line for line in table.splitlines() if line.startswith("| sgd"))
    assert "wd: yes (high, not extended)" in row
    assert any("weight decay 0.005 is the highest" in line for line in edge_summary({"sgd": s}, chosen))
    # an interior weight decay and an interior lr: nothing flagged
    s.results = {k: dict(v, err=10.0 if (k[0] == 0.1 and k[1] == wds[1]) else 20.0) for k, v in s.results.items()}
    chosen = {"sgd": s.best([1000, 1001])}
    assert edge_summary({"sgd": s}, chosen) == []
    assert "wd:" not in selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10])


# --- commits of the selection trials and the finals -----------------------------------------------

def test_the_report_states_the_commits_and_flags_selection_trials_of_other_code(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished", "final": {"val_top1_err": 5.0},
                                                   "git": {"commit": "abc123", "dirty": False}}))
    res = dispatch.read_outcome(tmp_path)
    assert res["commit"] == "abc123" and res["dirty"] is False
    row = lambda stage, commit: {"stage": stage, "commit": commit, "dirty": False}  # noqa: E731
    text, warnings = code_section([row("select", "old1"), row("select", "old1"), row("final", "new2")])
    assert "`old1` (2 run(s))" in text and "`new2` (1 run(s))" in text
    assert len(warnings) == 1 and "not all trained at one commit" in warnings[0] and "**Warning:**" in text
    text, warnings = code_section([row("select", "new2"), row("final", "new2")], {"commit": "new2"})
    assert warnings == [] and "Warning" not in text


def test_the_report_flags_runs_of_other_code_versions_threads_or_a_mixed_resume(tmp_path):
    """Every run at one commit, but not this invocation's (a relaunch reused them all after a code
    change); versions that differ; CPU runs at other thread counts (a relaunch with another
    workers=); a run resumed with other code: each was reported clean."""
    record = {"status": "finished", "final": {"val_top1_err": 5.0}, "git": {"commit": "old1", "dirty": False},
              "versions": {"torch": "2.14.1", "numpy": "2.1.0", "wandb": "0.1"},
              "hardware": {"device": "cpu", "torch_threads": 2}, "mixed_provenance": ["git.commit"]}
    (tmp_path / "run.json").write_text(json.dumps(record))
    res = dispatch.read_outcome(tmp_path)
    assert (res["threads"], res["device"], res["mixed_provenance"]) == (2, "cpu", ["git.commit"])
    now = {"commit": "new2", "dirty": False, "versions": {"torch": "2.14.1", "numpy": "2.2.0", "wandb": "0.2"}}
    plain = {**res, "mixed_provenance": None}
    rows = [{**plain, "stage": "select"}, {**plain, "stage": "final", "threads": 1}, {**res, "stage": "final"}]
    text, warnings = code_section(rows, now)
    assert len(warnings) == 4, warnings
    assert warnings[0].startswith("3 of 3 run(s) were trained with other code than this invocation's (`new2`)")
    assert warnings[1].endswith("numpy 2.1.0 (3 run(s)), now 2.2.0")  # torch agrees; wandb computes nothing
    assert "different numbers of torch threads (1: 1 run(s), 2: 2 run(s)" in warnings[2]
    assert warnings[3].startswith("1 run(s) were resumed with another git.commit than they started with")
    assert text.count("**Warning:**") == 4 and "- torch threads per CPU run: 1 (1 run(s)), 2 (2 run(s))" in text
    same = [{**plain, "stage": s} for s in ("select", "final")]
    assert code_section(same, {**now, "commit": "old1", "versions": record["versions"]})[1] == []
    # one commit, but the tree was edited (not committed) between the runs and this relaunch
    edited = [{**r, "dirty": True, "diff_sha1": "aaa"} for r in same]
    warnings = code_section(edited, {"commit": "old1", "dirty": True, "diff_sha1": "bbb", "versions": {}})[1]
    assert warnings[0].startswith("2 of 2 run(s) were trained with other uncommitted changes than this invocation's")
    assert warnings[1].startswith("the runs were trained with uncommitted changes")
    assert len(code_section(edited, {"commit": "old1", "dirty": True, "diff_sha1": "aaa", "versions": {}})[1]) == 1
    # changes whose hash could not be taken (diff_sha1 null) on both sides are not known to be the
    # same changes: flagged, as train.py's note on a finished run reported again flags them
    unknown = [{**r, "diff_sha1": None} for r in edited]
    warnings = code_section(unknown, {"commit": "old1", "dirty": True, "diff_sha1": None, "versions": {}})[1]
    assert warnings[0].startswith("2 of 2 run(s) were trained with other uncommitted changes"), warnings
    # helper-92: clean runs reused by an invocation on an edited tree did not have "other uncommitted changes"
    warnings = code_section(same, {"commit": "old1", "dirty": True, "diff_sha1": "bbb", "versions": {}})[1]
    assert warnings[0].startswith("2 of 2 run(s) were trained with none of the uncommitted changes of this "
                                  "invocation"), warnings
    # a hand-edited record (threads in a list, a commit that is a number) is no crash after the training
    odd = {**record, "git": {"commit": 7, "dirty": True, "diff_sha1": ["x"]}, "hardware": {"torch_threads": [2]}}
    (tmp_path / "run.json").write_text(json.dumps(odd))
    res = dispatch.read_outcome(tmp_path)
    assert (res["commit"], res["diff_sha1"], res["threads"]) == (None, None, None)
    code_section([{**res, "stage": "select"}, {**plain, "stage": "final"}], now)
    # a trial that failed before writing a record (train() raised) was trained with no code at all:
    # no "other code" warning on a fresh comparison (helper-74)
    fresh = [{"stage": "select", "status": "finished", "commit": "new2", "dirty": False, "run_dir": "a"},
             {"stage": "select", "status": "failed", "commit": None, "dirty": None, "run_dir": "b"},
             {"stage": "final", "status": "finished", "commit": "new2", "dirty": False, "run_dir": "c"}]
    assert code_section(fresh, {"commit": "new2", "dirty": False, "versions": {}})[1] == []
    (tmp_path / "run.json").write_text(json.dumps({**record, "final": [1], "git": {"commit": "x", "dirty": "false"}}))
    res = dispatch.read_outcome(tmp_path)  # no crash on a final that is not an object
    assert res["dirty"] is None and res["err"] != res["err"]


# --- the report reads exactly this comparison's finals -------------------------------------------

def test_the_report_reads_its_own_finals_not_an_older_comparisons_twins(tmp_path, env, monkeypatch):
    """Two finals that differ only in trainer.oscillation_every: two run directories (the hash
    includes it), one (config_id, seed) for load_runs, which keeps the first started; the newer
    comparison's report must read its own."""
    monkeypatch.setenv("ADAREM_CACHE", env["ADAREM_CACHE"])
    dirs = []
    for osc in ("10", "0"):  # one after the other: start_time (microseconds) orders them
        base = cli.trial_base(["data=digits", "trainer.epochs=1", "trainer.log_every=1000",
                               f"trainer.oscillation_every={osc}"])
        res = dispatch.run_one(cli.trial_overrides(base, [], tmp_path, "sgd", 0.1, 1e-4, 0, "final"), 1)
        assert res["status"] == "finished", res
        dirs.append(res["run_dir"])
    older, newer = dirs
    assert older != newer
    from adarem.results import load_runs
    assert load_runs(tmp_path / "final", newest_comparison=False).subset([newer]).runs.empty  # the trap
    rs = cli.load_own_runs([newer])
    assert list(rs.runs.run_dir) == [newer]
    assert set(rs.evals.run_dir) == {newer} and not rs.problems
    rs = cli.load_own_runs([newer, str(tmp_path / "gone")])
    assert list(rs.runs.run_dir) == [newer]
    assert [p["run_dir"] for p in rs.problems] == [str(tmp_path / "gone")]


class _VanishingFinals:
    """A dispatcher whose trials report finished, but whose final run directories do not exist."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, stage, trials):
        for i, (key, _) in enumerate(trials):
            yield key, {"run_dir": str(self.root / stage / str(i)), "status": "finished", "err": 10.0 + i % 3,
                        "loss": 0.5, "seconds": 0.0, "commit": "c", "dirty": False}


def test_a_report_that_cannot_be_made_writes_nothing_and_records_no_comparison(tmp_path, capsys, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    (out / "selection.csv").write_text("previous\n")
    monkeypatch.setattr(cli, "LocalDispatcher", lambda workers, threads: _VanishingFinals(runs))
    line = _refusal(capsys, ["optimizers=sgd", "data=digits", "trainer.epochs=1", "select_seeds=1", "seeds=1",
                             "lr_grid=0.5,1,2", f"runs={runs}", f"out={out}"])
    assert "none of this comparison's final runs could be read back" in line
    assert (out / "selection.csv").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["selection.csv"]
    assert not (runs / "comparisons").exists()  # never the newest comparison for make_tables


def test_finals_are_launched_seed_by_seed_across_the_optimizers(tmp_path, capsys, monkeypatch):
    """Launched optimizer by optimizer, a change in the machine's load over the hours of a
    comparison landed on whole optimizers (the committed study's finals: plain SGD, launched second,
    the slowest in images/s); interleaved, it spreads over all of them."""
    launched = []

    class Recording(_VanishingFinals):
        def run(self, stage, trials):
            trials = list(trials)
            if stage == "final":
                launched.extend(key for key, _ in trials)
            yield from super().run(stage, trials)

    monkeypatch.setattr(cli, "LocalDispatcher", lambda workers, threads: Recording(tmp_path / "runs"))
    _refusal(capsys, ["optimizers=sgd,adam", "data=digits", "trainer.epochs=1", "select_seeds=1", "seeds=2",
                      "lr_grid=0.5,1,2", f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}"])
    assert launched == [("sgd", 0), ("adam", 0), ("sgd", 1), ("adam", 1)], launched


# --- launcher=slurm: a finished run of other data is refused, as train.py refuses it ---------------

def test_the_slurm_launcher_refuses_a_finished_trial_of_other_data(tmp_path, env, monkeypatch):
    monkeypatch.setenv("ADAREM_CACHE", env["ADAREM_CACHE"])
    base = cli.trial_base(["data=digits", "trainer.epochs=1"])
    trials = {name: cli.trial_overrides(base, [], tmp_path, "sgd", lr, 1e-4, 1000, "select")
              for name, lr in (("same_data", 0.1), ("other_data", 0.2), ("no_identity", 0.3))}
    cfg = dispatch.compose(trials["same_data"])
    ident = dispatch.host_data_identity(cfg.data, int(cfg.trainer.batch_size), 1000, {})
    assert ident and ident["train_sha1"]
    for name, overrides in trials.items():
        d = Path(dispatch.compose(overrides).run_dir)
        d.mkdir(parents=True)
        record = {"status": "finished", "final": {"val_top1_err": 12.5, "val_loss": 0.4}, "world_size": 1,
                  "bn_batch": None, "data_identity": dict(ident, train_samples=1)}
        if name == "other_data":
            record["data_identity"]["train_sha1"] = "0000000000"
        if name == "no_identity":
            del record["data_identity"]
        (d / "run.json").write_text(json.dumps(record))
    d = dispatch.SlurmDispatcher(tmp_path / "submitit", dict(nodes=1, tasks_per_node=1), poll_s=0)
    monkeypatch.setattr(d, "_executor", lambda stage: pytest.fail("nothing is to be submitted"))
    out = dict(d.run("select", list(trials.items())))
    assert out["same_data"]["status"] == "finished" and out["same_data"]["err"] == 12.5
    assert out["no_identity"]["status"] == "finished"  # a record older than data identities: reused, as train.py does
    bad = out["other_data"]
    assert bad["refused"] and "holds a finished run whose dataset differs from this one" in bad["error"]
    assert "train_sha1" in bad["error"]


def test_the_slurm_launcher_launches_a_finished_trial_whose_data_it_cannot_check_here(tmp_path, monkeypatch):
    base = cli.trial_base(["data=digits", "trainer.epochs=1"])
    overrides = cli.trial_overrides(base, [], tmp_path, "sgd", 0.1, 1e-4, 1000, "select")
    d = Path(dispatch.compose(overrides).run_dir)
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"status": "finished", "final": {"val_top1_err": 1.0},
                                            "data_identity": {"train_sha1": "x"}}))
    monkeypatch.setattr(dispatch, "host_data_identity", lambda *a: None)  # no data on the submitting host
    disp = dispatch.SlurmDispatcher(tmp_path / "submitit", dict(nodes=1, tasks_per_node=1), poll_s=0)

    class Submitted(Exception):
        pass

    def executor(stage):
        raise Submitted
    monkeypatch.setattr(disp, "_executor", executor)
    with pytest.raises(Submitted):  # train.py, on the node with the data, checks it
        list(disp.run("select", [("k", overrides)]))


# --- arguments that would change the protocol silently -------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["seed=3"], "seed=3 is set by the protocol for every trial"),
    (["seeds=1001"], "would overlap the selection seeds"),
    (["lr_span=0.2"], "lr_span=0.2 is not a whole number of lr_step=0.5 steps (0.4)"),
    (["lr_span=0.25"], "is not a whole number of lr_step=0.5 steps (0.5)"),  # rounds to 0 steps
    (["lr_span=1", "lr_step=0.3"], "is not a whole number of lr_step=0.3 steps (3.33)"),  # was ±0.9
    (["lr_grid=0.1,1,1.0000001,10"], "factors 1,1.0000001 give sgd lrs that are written the same (0.1"),
    (["lr_span=1e-6", "lr_step=1e-7"], "are written the same"),
])
def test_arguments_that_would_change_the_protocol_are_refused_in_one_line(argv, says, capsys, tmp_path):
    line = _refusal(capsys, ["optimizers=sgd", "dry_run=true", f"runs={tmp_path}", *argv])
    assert says in line, line


def test_data_and_optimizer_defaults_given_on_the_command_line_are_noted():
    notes = cli.argument_notes(["data=digits", "optimizer.lr=0.1"])
    assert any(n.startswith("data=digits replaces the main job's defaults") for n in notes)
    assert any(n.startswith("optimizer.lr=0.1 replaces every optimizer's default lr") for n in notes)
    assert cli.argument_notes([]) == [] and cli.argument_notes(["experiment=fashion_mnist_small"]) == []


# --- a worker orphaned by a killed compare starts no further trial ---------------------------------

def test_an_orphaned_worker_starts_no_queued_trial(tmp_path):
    code = ("from adarem.protocol import dispatch\n"
            "dispatch._ORPHANED.set()\n"
            f"dispatch.run_one(['data=digits', 'run_dir={tmp_path / 'run'}'], 1)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, ADAREM_CACHE=str(tmp_path / "cache")))
    assert out.returncode == 1, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_an_optimizer_setting_given_to_compare_applies_to_the_optimizers_that_read_it():
    """compare has no per-optimizer override: optimizer.eps=1e-6 for Adam against SGD must not be
    refused for SGD (train.py refuses a setting its optimizer does not read), nor change SGD's trials."""
    base = ["data=digits", "optimizer.eps=1e-6", "++optimizer.momentum=0.8"]
    assert cli.for_optimizer(base, "sgd") == ["data=digits", "++optimizer.momentum=0.8"]
    assert cli.for_optimizer(base, "adam") == ["data=digits", "optimizer.eps=1e-6"]
    assert cli.for_optimizer(base, "adarem_m") == base
    assert cli.unread_notes(base[1:], ["sgd", "adam", "adarem"]) == [
        "optimizer.eps=1e-6 applies to adam, adarem; sgd does not read it",
        "++optimizer.momentum=0.8 applies to sgd, adarem; adam does not read it"]
    assert cli.for_optimizer(["optimizer.lr=0.1"], "sgd") == ["optimizer.lr=0.1"]  # read by every optimizer
    # from the preset as composed: AdaRem with a decay_horizon reads no decay; betas.0 is a setting of betas
    assert cli.for_optimizer(["optimizer.decay=0.99"], "adarem_horizon") == []
    assert cli.for_optimizer(["optimizer.decay=0.99"], "adarem") == ["optimizer.decay=0.99"]
    assert cli.for_optimizer(["optimizer.betas.0=0.95"], "sgd") == []


def test_an_optimizer_setting_no_compared_optimizer_reads_is_refused(capsys, tmp_path):
    """It changed nothing, yet named the report folder (results/digits_small_cnn-optimizer.eps=1e-6)."""
    line = _refusal(capsys, ["optimizers=sgd,sgd_plain", "optimizer.eps=1e-6", "dry_run=true", f"runs={tmp_path}"])
    assert line == "error: optimizer.eps=1e-6 is read by none of optimizers=sgd,sgd_plain; drop it, or add an " \
                   "optimizer that reads it", line
