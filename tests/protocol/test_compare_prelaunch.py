"""compare.py refuses before the first trial (and dry_run=true refuses alike) what used to be found
only after hours of training: a setting the finals add (trainer.evals_per_epoch) that clashes with
the user's, more evaluations per epoch than an epoch has steps, trainer.max_steps (every trial
stopped early, scored worst, and the lr grid blamed), and an out= or runs= that cannot be written.
Each refusal is one ``error:`` line naming the value and what to do, exit 2, with nothing trained
or written. A comparison of another configuration never writes its report into the main job's
(or an experiment's) report folder by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adarem.protocol import cli
from tests.conftest import FASHION_ROOT, REPO

QUICK = ["optimizers=sgd", "lr_grid=1", "seeds=1", "select_seeds=1", "trainer.epochs=1"]


def refused(capsys, argv: list[str]) -> str:
    """compare.py's command line in this process: exit 2 and exactly one stderr line, returned."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    cap = capsys.readouterr()
    assert exc.value.code == 2, (cap.out, cap.err)
    assert cap.err.startswith("error: ") and cap.err.count("\n") == 1, cap.err
    assert "compare: " not in cap.out, cap.out  # refused before the plan: nothing launched
    return cap.err.strip()


def nothing_written(tmp_path: Path, *kept: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def image_tree(root: Path, classes: int, per_class: int) -> Path:
    """An ImageFolder tree of empty *.jpg files: counted, never read, by a refusal."""
    for c in range(classes):
        (root / "train" / str(c)).mkdir(parents=True)
        (root / "val" / str(c)).mkdir(parents=True)
        for i in range(per_class):
            (root / "train" / str(c) / f"{i:04d}.jpg").touch()
    return root


# --- 1. every kind of trial is checked: the finals add trainer.evals_per_epoch ----------------------

@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_a_setting_of_the_finals_is_checked_before_the_selection_trials(env, tmp_path, dry_run):
    """The hostile user's command: the selection trials trained, then every final was refused."""
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *QUICK, "trainer.eval_every=2",
                          f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}", f"dry_run={dry_run}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: trainer.evals_per_epoch=4 needs trainer.eval_every=1 (got 2)"), res.stderr
    assert res.stderr.count("\n") == 1 and "the final runs of optimizer=sgd" in res.stderr
    assert "evals_per_epoch=1 evaluates them at epoch ends only" in res.stderr
    assert "select" not in res.stdout and "compare: " not in res.stdout
    nothing_written(tmp_path)


def test_the_finals_accept_what_they_are_given(capsys, tmp_path):
    # evals_per_epoch=1 adds no mid-epoch evaluation: trainer.eval_every=2 is then fine for both kinds
    assert cli.main([*QUICK, "trainer.eval_every=2", "evals_per_epoch=1", f"runs={tmp_path / 'r'}",
                     f"out={tmp_path / 'o'}", "dry_run=true"]) == 0
    assert "dry run:" in capsys.readouterr().out
    nothing_written(tmp_path)


# --- 1b. evaluations per epoch against the steps of an epoch, where the data's size is known ----------

def test_more_evaluations_than_steps_of_an_epoch_of_the_finals_are_refused(capsys, tmp_path, monkeypatch):
    """The main job's digits (its cached ImageFolder tree counted, not read): 50 images, batch 16."""
    monkeypatch.setenv("ADAREM_CACHE", str(tmp_path / "cache"))
    from adarem.data.digits import DIGITS_VERSION

    image_tree(tmp_path / "cache" / f"digits_{DIGITS_VERSION}", 10, 5)
    line = refused(capsys, [*QUICK, "trainer.batch_size=16", f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}"])
    assert line == ("error: trainer.evals_per_epoch=4 exceeds the 3 steps of an epoch of the final runs (50 training "
                    "images // trainer.batch_size=16); give compare.py evals_per_epoch=3 or less, or a smaller "
                    "trainer.batch_size"), line
    nothing_written(tmp_path, "cache")
    # evals_per_epoch=3: accepted (3 evaluation points in 3 steps)
    assert cli.main([*QUICK, "trainer.batch_size=16", "evals_per_epoch=3", f"runs={tmp_path / 'r'}",
                     f"out={tmp_path / 'o'}", "dry_run=true"]) == 0
    nothing_written(tmp_path, "cache")


@pytest.mark.parametrize("args, says", [
    # an ImageFolder tree of data=digits at data.root: 20 images, 18 after the holdout of the selection
    (["data=digits", "DATA_ROOT", "trainer.batch_size=8"], "exceeds the 2 steps of an epoch of the final runs "
                                                            "(20 training images // trainer.batch_size=8)"),
    (["data=digits", "DATA_ROOT", "trainer.batch_size=8", "trainer.evals_per_epoch=3"],
     "trainer.evals_per_epoch=3 exceeds the 2 steps of an epoch of the selection trials (18 training images // "
     "trainer.batch_size=8); use trainer.evals_per_epoch=2 or less"),
    (["data=digits", "DATA_ROOT", "trainer.batch_size=19"], "trainer.batch_size=19 exceeds the 18 training images "
                                                             "of the selection trials (data=digits); lower it"),
    (["data=synthetic", "data.synthetic_train_size=300", "trainer.batch_size=128"],
     "data=synthetic has no training split to hold out from"),
])
@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_evaluations_per_epoch_are_checked_against_the_split_they_train_on(capsys, tmp_path, args, says, dry_run):
    root = image_tree(tmp_path / "data", 2, 10)
    args = [f"data.root={root}" if a == "DATA_ROOT" else a for a in args]
    line = refused(capsys, [*QUICK, *args, f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}", f"dry_run={dry_run}"])
    assert says in line, line
    nothing_written(tmp_path, "data")


@pytest.mark.parametrize("classes, per_class, says", [
    (2, 0, "the training split of the selection trials holds 0 image(s): data=digits"),
    (1, 1, "the training split of the selection trials holds 1 image(s), all of which the holdout takes "
           "(data.holdout_fraction=0.25)"),
])
def test_a_split_with_no_image_to_train_on_is_refused_by_name(capsys, tmp_path, classes, per_class, says):
    """Before: "trainer.batch_size=8 exceeds the -1 training images"."""
    root = image_tree(tmp_path / "data", classes, per_class)
    line = refused(capsys, [*QUICK, "data=digits", f"data.root={root}", "data.holdout_fraction=0.25",
                            f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}", "dry_run=true"])
    assert says in line and "the -1 " not in line, line
    assert line.endswith("point data.root at a split with training images"), line
    nothing_written(tmp_path, "data")


@pytest.mark.skipif(not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST")
def test_fashion_mnist_is_sized_from_its_file_header(capsys, tmp_path):
    line = refused(capsys, [*QUICK, "data=fashion_mnist", "trainer.batch_size=20000", f"runs={tmp_path / 'r'}",
                            f"out={tmp_path / 'o'}", "dry_run=true"])
    assert "exceeds the 3 steps of an epoch of the final runs (60000 training images" in line, line
    assert cli.main([*QUICK, "data=fashion_mnist", "trainer.batch_size=15000", f"runs={tmp_path / 'r'}",
                     f"out={tmp_path / 'o'}", "dry_run=true"]) == 0
    nothing_written(tmp_path)


def test_a_large_tree_is_counted_only_as_far_as_the_check_needs(tmp_path):
    from omegaconf import OmegaConf

    root = image_tree(tmp_path / "data", 3, 400)
    data = OmegaConf.create({"name": "folder", "root": str(root)})
    assert cli.train_images(data, 10**6) == 1200
    assert 50 <= cli.train_images(data, 50) < 1200  # stops once 50 are found
    cfg = OmegaConf.create({"data": {"name": "folder", "root": str(root), "eval_on": "holdout",
                                     "holdout_fraction": 0.5},
                            "trainer": {"batch_size": 100, "evals_per_epoch": 4}})
    steps, images = cli.epoch_steps(cfg)
    assert steps >= 4 and images >= 400
    assert cli.epoch_steps(OmegaConf.merge(cfg, {"data": {"root": str(tmp_path / "none")}})) is None


# --- 2. trainer.max_steps --------------------------------------------------------------------------

@pytest.mark.parametrize("arg", ["trainer.max_steps=5", "++trainer.max_steps=5"])
@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_max_steps_is_refused(capsys, tmp_path, arg, dry_run):
    line = refused(capsys, [*QUICK, arg, f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}", f"dry_run={dry_run}"])
    assert line == (f"error: {arg}: compare.py needs trials that finish (a trial stopped at trainer.max_steps "
                    f"scores as the worst); use trainer.epochs=N for a shorter study"), line
    nothing_written(tmp_path)


def test_max_steps_zero_is_no_limit_and_accepted(capsys, tmp_path):
    assert cli.main([*QUICK, "trainer.max_steps=0", f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}",
                     "dry_run=true"]) == 0
    nothing_written(tmp_path)


# --- 3. out= and runs= ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, where, says", [
    ("out", "file", "is a file, not a folder; pass out= a folder that can be created and written"),
    ("out", "file/sub", "cannot be created: {tmp}/file is a file, not a folder; pass out="),
    ("runs", "file", "is a file, not a folder; pass runs= a folder that can be created and written"),
    ("runs", "file/sub/deeper", "cannot be created: {tmp}/file is a file, not a folder; pass runs="),
    ("out", "/proc/adarem-compare-out", "cannot be created: /proc is not writable; pass out="),  # also as root
])
@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_an_out_or_runs_that_cannot_be_written_is_refused(capsys, tmp_path, key, where, says, dry_run):
    (tmp_path / "file").write_text("a user's file\n")
    folders = {"out": str(tmp_path / "o"), "runs": str(tmp_path / "r")}
    folders[key] = where if where.startswith("/") else str(tmp_path / where)
    line = refused(capsys, [*QUICK, f"runs={folders['runs']}", f"out={folders['out']}", f"dry_run={dry_run}"])
    assert line.startswith(f"error: {key}={folders[key]} {says.format(tmp=tmp_path)}"), line
    nothing_written(tmp_path, "file")
    assert (tmp_path / "file").read_text() == "a user's file\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_unwritable_out_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = refused(capsys, [*QUICK, f"runs={tmp_path / 'r'}", f"out={locked / 'report'}", "dry_run=false"])
        assert f"out={locked / 'report'} cannot be created: {locked} is not writable" in line, line
        line = refused(capsys, [*QUICK, f"runs={tmp_path / 'r'}", f"out={locked}", "dry_run=false"])
        assert f"out={locked} is not writable" in line, line
    finally:
        locked.chmod(0o700)
    nothing_written(tmp_path, "locked")


# --- 4. the default out of a comparison of another configuration -----------------------------------

def plan(capsys, argv) -> tuple[str, str]:
    assert cli.main([*argv, "optimizers=sgd", "lr_grid=1", "dry_run=true"]) == 0
    cap = capsys.readouterr()
    return cap.out.split("; report to ", 1)[1].splitlines()[0], cap.err


@pytest.mark.parametrize("argv, folder", [
    ([], "digits_small_cnn"),  # the main job
    (["trainer.epochs=2"], "digits_small_cnn-trainer.epochs=2"),
    (["data=digits"], "digits_small_cnn-data=digits"),  # the main job's name without its digits defaults
    (["data=digits", "trainer.epochs=2"], "digits_small_cnn-data=digits-trainer.epochs=2"),
    (["data=fashion_mnist"], "fashion_mnist_small_cnn"),  # named after the data already
    (["experiment=fashion_mnist"], "fashion_mnist"),  # the committed study's folder: its own configuration
    (["experiment=fashion_mnist", "trainer.epochs=2", "data.holdout_fraction=0.2", "logging.wandb=offline"],
     "fashion_mnist-trainer.epochs=2"),  # the selection's holdout and logging do not change the finals
    (["schedule.milestones=[1,2]", "schedule=step"],  # characters replaced: a hash of the exact overrides
     "digits_small_cnn-schedule.milestones=_1,2_-schedule=step-" + __import__("hashlib").sha1(
         "schedule.milestones=[1,2]\0schedule=step".encode()).hexdigest()[:10]),
])
def test_another_configuration_does_not_replace_the_main_report_by_default(capsys, tmp_path, argv, folder):
    if folder == "fashion_mnist":  # the committed study's report is there (comparison.json): optimizers=sgd
        # alone would drop its seven other optimizers' tables, and is refused that folder
        line = refused(capsys, [*argv, "optimizers=sgd", "lr_grid=1", "dry_run=true", f"runs={tmp_path / 'r'}"])
        assert line.startswith(f"error: out={cli.HOME / 'results' / folder} holds the report of a comparison of this "
                               f"setting with optimizer(s) adam, adamw, adarem"), line
        nothing_written(tmp_path)
        return
    out, err = plan(capsys, [*argv, f"runs={tmp_path / 'r'}"])
    assert out == str(cli.HOME / "results" / folder), out
    if folder.split("-", 1)[0] != folder:
        assert f"note: the report goes to {out}, not results/{folder.split('-', 1)[0]}" in err, err
    nothing_written(tmp_path)


def test_out_given_is_used_as_given_and_a_long_suffix_is_shortened(capsys, tmp_path):
    out, err = plan(capsys, ["trainer.epochs=2", f"out={tmp_path / 'mine'}", f"runs={tmp_path / 'r'}"])
    assert out == str(tmp_path / "mine") and "the report goes to" not in err
    many = [f"optimizer.eps=1e-{i}" for i in range(12)]
    long = cli.default_out("digits_small_cnn", many)
    assert len(long.name) < 120 and long != cli.default_out("digits_small_cnn", many[:-1] + ["optimizer.eps=2"])


def test_the_default_folder_is_one_per_configuration():
    """Two orders of the same overrides were two folders; two data roots whose paths differ only
    in characters replaced by _ were one, and the second comparison replaced the first's report
    (helper-56)."""
    assert cli.default_out("x", ["trainer.epochs=2", "trainer.batch_size=64"]) == \
        cli.default_out("x", ["trainer.batch_size=64", "trainer.epochs=2"])
    assert cli.default_out("x", ["data.root=/d/my_data/tree"]) != cli.default_out("x", ["data.root=/d/my/data/tree"])


@pytest.mark.parametrize("arg, says", [
    ("seeds=zero", "bad compare.py argument"),
    ("trainer.epoch=3", "Key 'epoch' not in 'TrainerConfig'"),
    ("lr_span=1,2", "bad compare.py argument"),
], ids=["compare.py argument", "unknown key", "list for a number"])
def test_a_bad_command_line_is_refused_before_torch_is_imported(tmp_path, arg, says):
    """A typo costs a fraction of a second, as with train.py: compare.py imported torch and timm
    (~4 s, through adarem.schedule) before it read its arguments."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['compare.py', 'optimizers=sgd', {arg!r}, 'runs={tmp_path / 'runs'}', 'out={tmp_path / 'out'}']\n"
             "try:\n    runpy.run_path(sys.argv[0].join(['scripts/', '']), run_name='__main__')\n"
             "except SystemExit as exc:\n    print(exc.code, sorted(m for m in ('torch', 'timm') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.stdout.split("\n")[0] == "2 []", (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and says in res.stderr and res.stderr.count("\n") == 1, res.stderr
    nothing_written(tmp_path)


def test_a_holdout_of_few_images_is_noted_after_the_checks(capsys, tmp_path):
    """data.holdout_fraction=0.01 of 200 images: a holdout of 2, where one image is 50 points of
    holdout error and most lrs tie; it was accepted without a word."""
    root = image_tree(tmp_path / "data", 2, 100)
    base = [*QUICK, "data=digits", f"data.root={root}", "trainer.batch_size=8", f"runs={tmp_path / 'r'}",
            f"out={tmp_path / 'o'}", "dry_run=true"]
    assert cli.main([*base, "data.holdout_fraction=0.01"]) == 0
    assert ("note: the selection trials' holdout holds 2 image(s) (data.holdout_fraction=0.01 of 200): one image is "
            "50 points of holdout error") in capsys.readouterr().err
    assert cli.main(base + ["data.holdout_fraction=0.5"]) == 0  # 100 images: no note
    assert "holdout holds" not in capsys.readouterr().err


def test_a_data_root_that_is_no_folder_is_refused_before_a_local_launch(capsys, tmp_path):
    """dry_run=true said "accepted" for data.root=/nonexistent without a word; the launch then failed
    every selection trial in turn with the same message. A launch refuses it before anything starts;
    a dry run (a cluster's configuration checked where its data is not) says so."""
    argv = ["data=folder", f"data.root={tmp_path / 'nope'}", "optimizers=sgd", "lr_grid=1", f"runs={tmp_path / 'runs'}"]
    said = (f"data.root='{tmp_path / 'nope'}' is not a directory; point data.root at an ImageFolder tree with train/ "
            f"and val/ (for ImageNet see scripts/prepare_imagenet.py)")
    assert cli.main([*argv, "dry_run=true"]) == 0
    assert f"note: {said}: launched here (launcher=local), every trial would fail" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {said}"
    assert not (tmp_path / "runs").exists()


# --- 4. a report folder that holds another comparison's report -------------------------------------

def test_an_out_holding_another_settings_report_is_refused_and_its_own_is_replaced(capsys, tmp_path):
    """Two comparisons into one out= (slurm/sweep_paper.sh out=X: four experiments in parallel): the
    last to finish replaced the others' reports without a word (helper-83). Of one setting, a
    comparison that leaves out an optimizer of the report there would lose its tables too (helper-86);
    one that compares them all (extended by an optimizer), or the same command, replaces it."""
    import json

    out = tmp_path / "o"
    out.mkdir()
    argv = [*QUICK, f"runs={tmp_path / 'r'}", f"out={out}", "dry_run=true"]

    def owner(**kw):
        (out / "comparison.json").write_text(json.dumps({"setting_key": key, "command": "compare.py a b",
                                                         "optimizers": ["sgd"], **kw}))

    probe = cli.compose(cli.trial_base(["trainer.epochs=1"]))
    key = cli.setting_key(probe)
    owner(setting_key="0123456789")
    line = refused(capsys, argv)
    assert line == (f"error: out={out} holds the report of another comparison (compare.py a b); pass out= a folder "
                    f"of its own (or move that report away), or compare its optimizers too"), line
    owner(optimizers=["sgd", "adam"])  # this setting, but adam's tables would be lost
    line = refused(capsys, argv)
    assert "holds the report of a comparison of this setting with optimizer(s) adam, which this one does not " \
           "compare (compare.py a b)" in line, line
    owner(setting_key="0123456789", command=cli.compare_command(argv))  # the same command, a preset default since changed
    assert cli.main(argv) == 0
    owner()  # this setting, the same optimizers: its own, replaced later
    assert cli.main(argv) == 0
    owner(optimizers=[])  # this comparison extends it
    assert cli.main(argv) == 0


def test_a_report_that_lands_in_out_meanwhile_is_not_replaced(tmp_path):
    """The check again, with out= locked, just before the report moves in: a comparison of another
    setting that finished first keeps its report; this one exits 2 and says how to write its own."""
    import json

    from adarem.results.report import staged_output

    out = tmp_path / "o"
    out.mkdir()
    theirs = json.dumps({"setting_key": "0123456789", "command": "theirs", "optimizers": ["sgd"]})
    mine = {"setting_key": "abcdef0123", "command": "mine", "optimizers": ["sgd"]}
    with pytest.raises(SystemExit) as exc:
        with staged_output(out, before_move=lambda d: cli.refuse_other_report(d, mine, "o", True)) as stage:
            (stage / "tables.md").write_text("ours")
            (out / "comparison.json").write_text(theirs)  # the other comparison's report lands now
            (out / "tables.md").write_text("theirs")
    assert exc.value.code == 2
    assert (out / "tables.md").read_text() == "theirs" and (out / "comparison.json").read_text() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no staging folder left


def test_a_make_tables_report_removes_the_comparisons_record():
    from adarem.results.report import OWNED_FILES, REPORT_OWNER

    assert REPORT_OWNER in OWNED_FILES  # a report of make_tables.py into out= is no longer that comparison's
