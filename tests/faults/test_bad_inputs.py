"""Bad input through the real train.py command line: a non-zero exit, one clear line on stderr
(no traceback), and no run directory that looks finished."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from adarem.data.photo_tree import make_photo_tree
from tests.conftest import copy_run, read_run, run_train, torchrun


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    good = make_photo_tree(base / "good", classes=2, train_per_class=4, val_per_class=1, size_range=(60, 90))
    empty = base / "empty"
    for split in ("train", "val"):
        (empty / split / "class_a").mkdir(parents=True)
    mismatch = base / "mismatch"
    shutil.copytree(good, mismatch)
    (mismatch / "val" / "class_001").rename(mismatch / "val" / "class_xyz")
    return {"good": good, "empty": empty, "mismatch": mismatch}


def folder(root, *extra):
    return ["data=folder", f"data.root={root}", "data.image_size=32", "data.val_resize=36", "trainer.batch_size=4", *extra]


CASES = {
    "unknown model": (["model.name=resnet19"], "unknown model 'resnet19'; close matches"),
    "unknown optimizer": (["optimizer=nadam"], "Could not find 'optimizer/nadam'"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0"),
    "zero lr": (["optimizer.lr=0"], "optimizer.lr=0.0 must be > 0"),
    "beta outside [0,1)": (["optimizer.beta=1.0"], "optimizer.beta=1.0 must be in [0, 1)"),
    "batch size 0": (["trainer.batch_size=0"], "trainer.batch_size=0 must be >= 1"),
    "epochs < 1": (["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
    "missing dataset root": (["data=fashion_mnist", "data.root=/no/such/dir"], "install it with"),
    "missing imagefolder root": (["data=imagenet", "data.root=/no/such/imagenet"], "is not a directory"),
    "unknown key": (["trainer.epoch=3"], "Key 'epoch' not in 'TrainerConfig'"),
    "wrong type": (["trainer.epochs=ten"], "could not be converted to Integer"),
    "fp16 on CPU": (["trainer.amp=fp16"], "trainer.amp=fp16 needs a CUDA device"),
    "dali on a non-folder dataset": (["data=fashion_mnist", "data.loader=dali"], "data.loader=dali reads ImageFolder trees"),
    # the generated batches never pass through DALI: a throughput run so labelled measured none of it
    "dali on the synthetic data": (["data=synthetic", "data.loader=dali"], "data.loader=dali reads ImageFolder trees"),
    "resume from a missing file": (["resume=/no/such/checkpoint.pt"], "no such checkpoint file"),
    "batch larger than the dataset": (["trainer.batch_size=100000"], "exceeds the"),
    # values that used to run and end as a result (diverged, or a schedule nobody asked for)
    "negative divergence limit": (["trainer.diverge_loss=-1"], "trainer.diverge_loss=-1.0 must be > 0"),
    "negative warm-up lr": (["schedule.warmup_lr=-5"], "schedule.warmup_lr=-5.0 must be a finite value >= 0"),
    "negative milestone": (["schedule=step", "schedule.milestones=[-3]"], "schedule.milestones=[-3] must be increasing"),
    "milestones out of order": (["schedule=step", "schedule.milestones=[5,3]"], "must be increasing epoch numbers"),
    "negative max_steps": (["trainer.max_steps=-1"], "trainer.max_steps=-1 must be >= 0"),
    "appended unknown key": (["+trainer.no_such_key=1"], "unknown config key(s) trainer.no_such_key"),
    "appended unknown top-level key": (["+no_such_group=1"], "unknown config key(s) no_such_group"),
    "infinite lr": (["optimizer.lr=inf"], "optimizer.lr=inf must be a finite value <= 1e6"),
    "huge lr": (["optimizer.lr=1e308"], "optimizer.lr=1e+308 must be a finite value <= 1e6"),
    "nan lr": (["optimizer.lr=nan"], "optimizer.lr=nan must be > 0"),
    "infinite weight decay": (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf must be a finite value"),
    "negative weight decay": (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 must be a finite value"),
    "resilience decay 0": (["optimizer.decay=0"], "optimizer.decay=0.0 must be in (0, 1]"),
    "seed beyond numpy's range": (["seed=99999999999"], "seed=99999999999 must be in [0, 2**32)"),
    "negative seed": (["seed=-1"], "seed=-1 must be in [0, 2**32)"),
    "negative min lr": (["schedule.min_lr=-1"], "schedule.min_lr=-1.0 must be a finite value >= 0"),
    "zero std": (["data.std=[0.0]"], "data.std=[0.0] must be > 0"),
    "mean of the wrong length": (["data.mean=[0.5,0.5]"], "data.mean=[0.5, 0.5] must hold 1 finite value(s)"),
    "std of the wrong length": (["data.std=[0.2,0.2,0.2]"], "data.std=[0.2, 0.2, 0.2] must hold 1 finite value(s)"),
    "negative checkpoint interval": (["trainer.checkpoint_every_min=-1"], "trainer.checkpoint_every_min=-1.0 must be >= 0"),
    "holdout fraction 1.5": (["data.holdout_fraction=1.5"], "data.holdout_fraction=1.5 must be in (0, 1)"),
    # found by a hostile review: each of these used to end finished/diverged (exit 0) or in a traceback
    "one synthetic class": (["data=synthetic", "data.num_classes=1"], "data.num_classes=1 must be >= 2"),
    "infinite warm-up": (["schedule.warmup_epochs=inf"], "schedule.warmup_epochs=inf must be a finite value"),
    "infinite eps": (["optimizer=adam", "optimizer.eps=inf"], "optimizer.eps=inf must be a finite value in [0, 1)"),
    "typo in model kwargs": (["+model.kwargs.widht=64"], "rejects model.kwargs={'widht': 64}"),
    "negative val resize": (["data.val_resize=-5"], "data.val_resize=-5 must be 0"),
    "foreach and fused": (["optimizer=adamw", "optimizer.foreach=true", "optimizer.fused=true"],
                          "cannot both be set"),
    "huge evals per epoch": (["trainer.evals_per_epoch=10000000000"], "trainer.evals_per_epoch=10000000000 must be in"),
    "more evals than steps": (["trainer.evals_per_epoch=500"], "exceeds the"),
    # Hydra's own words named no remedy ("... does not support deletion", "Missing mandatory value")
    "deleted setting": (["~optimizer.lr"], "(~optimizer.lr deletes a setting or config group; train.py needs every "
                                           "one of them: set a value instead, optimizer.lr=VALUE)"),
    "deleted group": (["~optimizer"], "set a value instead, optimizer=VALUE"),
    # Hydra quoted the override as a Python repr: "Override(type=<OverrideType.DEL: 4>, key_or_group=''..."
    "deletion with a value": (["~=1"], "Config group override deletion value must be a string: ~=1 (to set a value "
                                       "write KEY=VALUE, without the ~)"),
}
# the hints above given only where they apply (helper-67: a deletion elsewhere on the command line, or a
# non-ASCII value already quoted, drew a hint about an override that had no part in the error)
NO_HINT = {
    "bad value beside a deletion": (["trainer.epochs=x", "~trainer.epochs"], "could not be converted to Integer"),
    "quoted non-ASCII value beside an unknown key": (["logging.group='jos\u00e9'", "trainer.nokey=1"],
                                                     "Key 'nokey' not in 'TrainerConfig'"),
}


@pytest.mark.parametrize("run_dir,expected", [
    ("/proc/no/such/run", "cannot create or write the run directory /proc/no/such/run"),
    ("/tmp/r\u00fcn", "must be quoted"),
], ids=["run directory that cannot be created", "unquoted unicode path"])
def test_bad_run_directory(tmp_path, env, run_dir, expected):
    _check(run_train([f"hydra.run.dir={run_dir}"], env), expected, tmp_path / "nothing")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_command_line(tmp_path, env, name):
    args, expected = CASES[name]
    _check(run_train(args, env, tmp_path / "run"), expected, tmp_path / "run")


@pytest.mark.parametrize("name", list(NO_HINT))
def test_a_hint_is_given_only_where_it_applies(tmp_path, env, name):
    args, expected = NO_HINT[name]
    res = run_train(args, env, tmp_path / "run")
    _check(res, expected, tmp_path / "run")
    assert "deletes a setting" not in res.stderr and "must be quoted" not in res.stderr, res.stderr


def _check(res, expected, run_dir):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    if (run_dir / "run.json").exists():
        assert read_run(run_dir)["status"] not in ("finished", "diverged")


def test_empty_dataset(tmp_path, env, trees):
    _check(run_train(folder(trees["empty"]), env, tmp_path / "run"), "holds no images", tmp_path / "run")
    # refused before its record was opened: no folder of a run is left behind (Hydra's train.log, the
    # lock), while a folder that holds anything else is left as it was
    assert not (tmp_path / "run").exists(), sorted(p.name for p in (tmp_path / "run").iterdir())
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    _check(run_train(folder(trees["empty"]), env, tmp_path / "kept"), "holds no images", tmp_path / "kept")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [".lock", "notes.txt", "train.log"]
    (tmp_path / "logged").mkdir()  # a train.log of earlier launches is theirs: kept, with its folder
    (tmp_path / "logged" / "train.log").write_text("an earlier launch's lines\n")
    _check(run_train(folder(trees["empty"]), env, tmp_path / "logged"), "holds no images", tmp_path / "logged")
    assert (tmp_path / "logged" / "train.log").read_text().startswith("an earlier launch's lines")


def test_class_folders_differ(tmp_path, env, trees):
    _check(run_train(folder(trees["mismatch"]), env, tmp_path / "run"), "class folders differ", tmp_path / "run")


def test_unreadable_checkpoint_with_resume_auto(tmp_path, env, stopped_run):
    run_dir = copy_run(stopped_run, tmp_path / "run")  # trainer.max_steps=3 (exit 0), batch size 64
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    (run_dir / "checkpoint_prev.pt").write_bytes(b"more garbage")
    _check(run_train(["trainer.batch_size=64"], env, run_dir), "is unreadable", run_dir)


def test_finished_run_without_resume_is_refused(tmp_path, env, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "run")  # trainer.epochs=1, finished
    before = (run_dir / "metrics.jsonl").read_bytes(), json.loads((run_dir / "run.json").read_text())
    _check(run_train(["trainer.epochs=1", "resume=never"], env, run_dir), "is never overwritten", tmp_path / "nothing")
    assert (run_dir / "metrics.jsonl").read_bytes() == before[0]
    assert json.loads((run_dir / "run.json").read_text()) == before[1]


@pytest.mark.slow
def test_more_ranks_than_validation_images(tmp_path, env, trees):
    # two validation images (one per class: an empty class folder is refused on its own), three ranks
    res = run_train(folder(trees["good"], "trainer.batch_size=3"), env, tmp_path / "run", launcher=torchrun(3))
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert ours and all("3 ranks but only 2 validation samples" in line for line in ours), res.stderr[-2000:]
    assert not (tmp_path / "run" / "run.json").exists()


def test_one_class_folder(tmp_path, env, trees):
    one = tmp_path / "one"
    shutil.copytree(trees["good"], one)
    for split in ("train", "val"):
        shutil.rmtree(one / split / "class_001")
    _check(run_train(folder(one), env, tmp_path / "run"), "holds 1 class folder(s)", tmp_path / "run")


def test_resume_from_another_models_checkpoint(tmp_path, env, stopped_run):
    import torch

    ckpt_path = stopped_run / "checkpoint.pt"  # trainer.max_steps=3 (exit 0); only read here
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["config"] = None  # even without the config check, loading must fail in one line
    ckpt["model"] = {"foo.weight": torch.zeros(3)}
    bad = tmp_path / "other_model.pt"
    torch.save(ckpt, bad)
    _check(run_train([f"resume={bad}"], env, tmp_path / "run"), "records no configuration", tmp_path / "run")
    ckpt["config"] = torch.load(ckpt_path, weights_only=False)["config"]
    torch.save(ckpt, bad)
    _check(run_train([f"resume={bad}"], env, tmp_path / "run2"), "does not fit this run", tmp_path / "run2")


def test_resume_from_a_dict_that_is_not_a_training_checkpoint(tmp_path, env):
    import torch

    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bad)
    _check(run_train([f"resume={bad}"], env, tmp_path / "run"), "is not a checkpoint of this suite", tmp_path / "run")


def test_resume_from_a_file_that_is_not_a_checkpoint_says_what_resume_takes(tmp_path, env):
    """The error named the file as unreadable, with torch's unpickling message, and no way on."""
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")
    res = run_train([f"resume={bad}"], env, tmp_path / "run")
    _check(res, f"resume={bad}: checkpoint {bad} is unreadable", tmp_path / "run")
    assert "a checkpoint.pt (or checkpoint_prev.pt) that train.py wrote, or resume=auto / resume=never" in res.stderr
    assert res.returncode == 2 and not (tmp_path / "run" / "run.json").exists()


def test_a_metrics_file_that_cannot_be_opened_leaves_the_record_alone(tmp_path, env, stopped_run):
    """metrics.jsonl is a folder: one line naming it, exit 2, and run.json still the stopped run's (it
    recorded a new segment, restarts + 1, and then status failed)."""
    run_dir = copy_run(stopped_run, tmp_path / "run")
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").mkdir()
    before = (run_dir / "run.json").read_bytes()
    res = run_train(["trainer.max_steps=5"], env, run_dir)
    _check(res, str(run_dir / "metrics.jsonl"), run_dir)
    assert res.returncode == 2 and (run_dir / "run.json").read_bytes() == before


def test_a_lock_file_that_cannot_be_made_is_named(tmp_path, env):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    _check(run_train([], env, tmp_path / "run"), f"its lock file {tmp_path / 'run' / '.lock'} (Is a directory)",
           tmp_path / "run")


@pytest.mark.parametrize("content", ["", '{"status": "runn', "[1, 2]"], ids=["empty", "truncated", "list"])
def test_broken_run_json_in_the_run_directory(tmp_path, env, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(content)
    res = run_train([], env, run_dir)
    _check(res, "run.json", tmp_path / "nothing")
    assert (run_dir / "run.json").read_text() == content  # left for the user to inspect


def test_wandb_online_without_credentials(tmp_path, env):
    e = {k: v for k, v in env.items() if not k.startswith("WANDB")}
    e["HOME"] = str(tmp_path / "home")  # no ~/.netrc with a key
    res = run_train(["logging.wandb=online"], e, tmp_path / "run")
    _check(res, "wandb login", tmp_path / "run")
    assert read_run(tmp_path / "run")["status"] == "failed"


def _compare(args, env, tmp_path):
    import subprocess

    from tests.conftest import REPO

    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), f"runs={tmp_path / 'runs'}",
                           f"out={tmp_path / 'out'}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,expected", [
    (["experiment=nope"], "bad override"),
    # the cause, as train.py says it (compare.py kept only Hydra's first line: "Could not override ...")
    (["trainer.no_such_key=1"], "Could not override 'trainer.no_such_key'; Key 'no_such_key' not in 'TrainerConfig'"),
    (["~optimizer.lr"], "does not support deletion (~optimizer.lr deletes a setting or config group; train.py needs "
                        "every one of them: set a value instead, optimizer.lr=VALUE)"),
    # the lexer's remedy, as train.py gives it (compare.py showed the bare LexerNoViableAltException)
    (["logging.group=jos\u00e9"], "(values with non-ASCII characters must be quoted: key='value')"),
    (["lr_grid=-1"], "every factor must be a finite number > 0"),
    (["seeds=zero"], "bad compare.py argument"),
], ids=["unknown experiment", "unknown key", "deleted setting", "unquoted non-ASCII value", "negative lr grid",
        "bad seeds"])
def test_compare_bad_input_exits_2_with_one_line(tmp_path, env, args, expected):
    res = _compare(args, env, tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_compare_stops_when_no_lr_finishes(tmp_path, env):
    """Every grid point diverges: no lr is selected, nothing is trained at a wrong lr, exit 2."""
    res = _compare(["optimizers=adam", "lr_grid=1e6", "seeds=1", "workers=1", "data=digits", "trainer.epochs=1",
                    "trainer.log_every=1"], env, tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "no learning rate of adam finished" in res.stderr and "diverged" in res.stderr.splitlines()[-1]
    assert not (tmp_path / "runs" / "final").exists()


def test_compare_says_when_every_trial_failed_rather_than_blame_the_grid(tmp_path, env):
    """A data root that does not exist: every selection trial fails, and the error told the user to
    move or widen the lr grid (helper-52); it now says that every trial failed, with the first error."""
    (tmp_path / "empty").mkdir()
    res = _compare(["optimizers=sgd", "lr_grid=1", "seeds=1", "select_seeds=1", "workers=1", "trainer.epochs=1",
                    "data=folder", f"data.root={tmp_path / 'empty'}"], env, tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every selection trial of sgd failed") and "does not exist" in last, last
    assert "widen the grid" not in res.stderr and not (tmp_path / "runs" / "final").exists()


def _make_tables(args, env):
    import subprocess

    from tests.conftest import REPO

    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("content", ["[1, 2]", '{"status": "finished", "config": null}'], ids=["list", "null config"])
def test_make_tables_on_foreign_run_json(tmp_path, env, content):
    run_dir = tmp_path / "runs" / "weird"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(content)
    (run_dir / "metrics.jsonl").write_text("")
    res = _make_tables([str(tmp_path / "runs"), "--out", str(tmp_path / "out")], env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no complete run" in res.stderr and "not a run record" in res.stderr


def test_make_tables_out_naming_a_file(tmp_path, env, finished_run):
    copy_run(finished_run, tmp_path / "runs" / "r")  # trainer.epochs=1, finished
    (tmp_path / "afile").write_text("x")
    res = _make_tables([str(tmp_path / "runs"), "--out", str(tmp_path / "afile")], env)
    assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr
    res = _make_tables([str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "sub")], env)
    assert res.returncode == 2 and "--out" in res.stderr and "cannot be created" in res.stderr  # wording of 59a260c
    assert "Traceback" not in res.stderr
    res = _make_tables([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--claims", "/no/claims.yaml"], env)
    assert res.returncode == 2 and "--claims /no/claims.yaml does not exist" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("final", [{}, {"val_top1_err": None}], ids=["empty final", "null final"])
def test_finished_record_without_a_finite_final_is_not_reported(tmp_path, env, finished_run, final):
    """A record an older version wrote after a stop right behind the last evaluation: "finished"
    with no final error. Launched again it must not be reported as a result (nan%)."""
    run_dir = copy_run(finished_run, tmp_path / "run")  # trainer.epochs=1, finished
    record = read_run(run_dir)
    record["final"] = final
    (run_dir / "run.json").write_text(json.dumps(record))
    res = run_train(["trainer.epochs=1"], env, run_dir)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "records no finite final error" in lines[0], res.stderr
    assert "nan" not in res.stdout


def test_disk_full_mid_run_ends_failed_with_one_line(tmp_path, env):
    """A file-size limit (what a full disk looks like to a writer) hit by the first checkpoint:
    one line, exit 2, run.json says failed, no temp file left behind."""
    import resource
    import subprocess

    from tests.conftest import FAST, REPO

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "optimizer.impl=foreach", f"hydra.run.dir={run_dir}"]
    limit = 150 * 1024  # above run.json and the metrics lines, below one checkpoint of small_cnn
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "free space" in lines[0], res.stderr[-2000:]
    assert read_run(run_dir)["status"] == "failed"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".lock" or ".tmp" in p.name]


@pytest.mark.slow
def test_sync_batchnorm_on_cpu_ranks_is_refused(tmp_path, env, stopped_run):
    """run.json records the images per BatchNorm batch (stopped_run: small_cnn, 1 rank, batch 64).
    SyncBatchNorm needs CUDA: on two CPU ranks it is refused on every rank in one line. (A resume
    at another world size, which would change the BatchNorm batch, is refused by the checkpoint:
    test_run_integrity.py.)"""
    assert read_run(stopped_run)["bn_batch"] == 64 and read_run(stopped_run)["per_rank_batch"] == 64
    res = run_train(["trainer.sync_bn=true"], env, tmp_path / "sync", launcher=torchrun(2))
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode != 0 and ours and all("trainer.sync_bn=true needs CUDA" in line for line in ours), \
        res.stderr[-2000:]
    assert not (tmp_path / "sync" / "run.json").exists()


def test_sync_batchnorm_in_one_process_is_refused(tmp_path, env):
    """helper-92: in one process trainer.sync_bn=true trained the same run as without it, in a run
    directory and a table setting of its own."""
    res = run_train(["trainer.sync_bn=true"], env, tmp_path / "sync")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: trainer.sync_bn=true changes nothing here (one process already normalises "
                               "over the whole batch of"), lines
    assert not (tmp_path / "sync" / "run.json").exists()


MODEL_CASES = {
    "dense layer sized for 28x28": (["model=two_conv_net"], "model 'two_conv_net' does not fit the input images (1x16x16"),
    "fixed-size ViT": (["model.name=vit_tiny_patch16_224"], "model 'vit_tiny_patch16_224' does not fit the input images"),
    "negative width": (["+model.kwargs.width=-5"], "model 'small_cnn' cannot be built with model.kwargs={'width': -5}"),
    "zero width": (["+model.kwargs.width=0"], "model 'small_cnn' with model.kwargs={'width': 0} does not fit"),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_that_does_not_fit_the_input(tmp_path, env, name):
    """Refused at set-up in one line, exit 2, before a run record exists (was: a traceback at the
    first training step, exit 1, and a run directory recorded failed)."""
    args, expected = MODEL_CASES[name]
    res = run_train(args, env, tmp_path / "run")
    _check(res, expected, tmp_path / "run")
    assert res.returncode == 2
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_setting_refused_at_start_leaves_no_run_behind(tmp_path, env):
    """trainer.evals_per_epoch above an epoch's steps was refused after run.json was written (status
    failed), so the corrected relaunch into the same directory was refused as another configuration
    and the directory had to be deleted by hand (found by helper-52)."""
    run_dir = tmp_path / "run"
    res = run_train(["trainer.evals_per_epoch=500"], env, run_dir)
    assert res.returncode == 2 and "trainer.evals_per_epoch=500 exceeds the" in res.stderr, res.stderr[-2000:]
    assert not (run_dir / "run.json").exists()
    res = run_train(["trainer.evals_per_epoch=2", "trainer.max_steps=1"], env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
