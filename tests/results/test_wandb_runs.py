"""adarem-tables --wandb: the tables made from a wandb project are the tables made from the run
directories. wandb's server cannot be reached here, so the project is stood in for by an object
with the wandb API's shape (``Api().runs(path)``, ``run.files(names=...)``, ``file.download``)
that serves the files of real offline wandb runs written by train.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adarem.cli import tables as tables_cli
from adarem.results.wandb_runs import download_runs
from tests.conftest import read_run, run_train
from tests.test_fsync import kill9, stagings, staging_of, take_over, writers


class FakeFile:
    def __init__(self, path: Path):
        self.name, self.path = path.name, path

    def download(self, root: str = ".", replace: bool = False, exist_ok: bool = False, api=None):
        target = Path(root) / self.name
        assert replace or not target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, target)  # follows the offline run's symlink, as `wandb sync` uploads


class FakeRun:
    def __init__(self, files_dir: Path, run_id: str, state: str = "finished"):
        self.files_dir, self.id, self.state = files_dir, run_id, state

    def files(self, names=None, pattern=None, per_page=50):
        return [FakeFile(self.files_dir / n) for n in names if (self.files_dir / n).is_file()]


class FakeApi:
    def __init__(self, runs: list[FakeRun]):
        self._runs = runs

    def runs(self, path):
        assert path == "me/adarem"
        return list(self._runs)


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory, env) -> list[Path]:
    """Two real train.py runs (two seeds) logged to wandb offline."""
    root = tmp_path_factory.mktemp("wandb_runs")
    e = {**env, "WANDB_MODE": "offline"}
    dirs = []
    for seed in (0, 1):
        run_dir = root / f"s{seed}"
        res = run_train(["trainer.epochs=1", "logging.wandb=offline", f"seed={seed}"], e, run_dir)
        assert res.returncode == 0, res.stderr[-3000:]
        dirs.append(run_dir)
    return dirs


def wandb_files(run_dir: Path) -> Path:
    (files,) = run_dir.glob("wandb/offline-run-*/files")
    return files


def test_a_run_attaches_its_final_record_to_its_wandb_run(offline_runs):
    for run_dir in offline_runs:
        files = wandb_files(run_dir)
        # what `wandb sync` uploads is the record as the run left it, finished with its final error,
        # in the wandb run's own folder (not a link to the run directory: a copied offline folder
        # or a removed run directory would upload nothing)
        for name in ("run.json", "metrics.jsonl"):
            assert not (files / name).is_symlink() and (files / name).read_bytes() == (run_dir / name).read_bytes()
        assert json.loads((files / "run.json").read_text())["status"] == "finished"


def test_tables_from_wandb_are_the_tables_from_the_run_directories(offline_runs, tmp_path, monkeypatch, capsys):
    local = tmp_path / "local"
    for run_dir in offline_runs:  # the run records alone, as make_tables reads them from a runs folder
        (local / run_dir.name).mkdir(parents=True)
        for name in ("run.json", "metrics.jsonl"):
            shutil.copyfile(run_dir / name, local / run_dir.name / name)
    assert tables_cli.main([str(local), "--out", str(tmp_path / "from_dirs")]) == 0

    runs = [FakeRun(wandb_files(d), read_run(d)["wandb_id"]) for d in offline_runs]
    crashed = tmp_path / "crashed_files"
    crashed.mkdir()  # a wandb run that attached nothing (crashed, or logged by another tool)
    runs.append(FakeRun(crashed, "crashed-1", state="crashed"))
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi(runs))
    out = tmp_path / "from_wandb"
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(out)]) == 0
    for name in ("test_error.csv", "speed.csv", "claims.csv"):
        assert (out / name).read_text() == (tmp_path / "from_dirs" / name).read_text(), name
    md = (out / "tables.md").read_text()
    assert "wandb:me/adarem/crashed-1" in md and "no run.json attached (wandb state crashed" in md
    assert "compare.py finals" not in md  # train.py runs, not a comparison
    assert sorted(p.name for p in (out / "wandb_runs").iterdir()) == sorted(r.id for r in runs[:2])

    # the download is the project as it is now: a run deleted from it does not survive from before
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi(runs[:1]))
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(out)]) == 0
    assert [p.name for p in (out / "wandb_runs").iterdir()] == [runs[0].id]
    import pandas as pd

    assert pd.read_csv(out / "test_error.csv").n.tolist() == [1]

    # nothing attached anywhere: one line per run and exit 2, not an empty table
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi(runs[2:]))
    capsys.readouterr()
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no complete run under me/adarem" in err and "crashed-1" in err


def test_a_local_folder_problem_is_not_blamed_on_the_project(tmp_path, monkeypatch, capsys):
    """The project is readable but <out>/wandb_runs is a file: the one line names that path and what
    to do (was: "cannot read the wandb project ... check ENTITY/PROJECT and wandb login")."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi([]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "wandb_runs").write_text("mine")
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'out' / 'wandb_runs'} is not a folder this command made" in err[0], err
    assert "wandb project" not in err[0]
    assert (tmp_path / "out" / "wandb_runs").read_text() == "mine"


@pytest.mark.parametrize("exc, says", [
    (OSError(28, "No space left on device"), "cannot write the wandb download into {root} (No space left on device)"),
    (PermissionError(13, "Permission denied", "/x/run.json"), "(/x/run.json: Permission denied)"),
])
def test_a_local_write_error_of_the_download_names_the_folder(tmp_path, monkeypatch, capsys, exc, says):
    """A full disk or a permission error while the download is written is the local folder's, not
    the project's (was: "cannot read the wandb project ... check ENTITY/PROJECT and wandb login")."""
    def fail(project, dest):
        raise exc

    monkeypatch.setattr(tables_cli, "download_runs", fail)
    out = tmp_path / "out"
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says.format(root=out / "wandb_runs") in err[0] and "wandb login" not in err[0], err


def test_an_unreachable_project_is_one_line(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")

    class Unreachable:
        def runs(self, path):
            raise ValueError("Could not find project me/adarem\nmore detail")

    monkeypatch.setattr(wandb, "Api", lambda: Unreachable())
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the wandb project 'me/adarem' (Could not find project me/adarem)" in err[0]
    assert not (tmp_path / "out" / "wandb_runs").exists() and not list((tmp_path / "out").glob(".wandb_runs*"))




def test_compare_finals_read_from_wandb_are_flagged(tmp_path, monkeypatch, capsys):
    """Which comparison chose which configuration lives in the runs folder, not on wandb: say so."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "run.json").write_text(json.dumps({"status": "finished", "config": {
        "run_dir": "runs/compare/digits_small_cnn/final/sgd/lr0.1_wd0.0001_s0_0123456789"}}))
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi([FakeRun(files, "sgd-s0-1")]))
    assert tables_cli.main(["--wandb", "me/adarem", "--out", str(tmp_path / "out")]) == 2
    assert "1 run(s) are compare.py finals" in capsys.readouterr().err


# --- a killed download's staging folder is removed by the next download, a live one's never ---------------

DOWNLOADER = """
import sys, time
from pathlib import Path
from adarem.results.wandb_runs import download_runs
class File:  # wandb's File: one record file downloaded, then stopped there
    name = "run.json"
    def download(self, root=".", replace=False):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / self.name).write_text("{}")
        print(Path(root) / self.name, flush=True)
        time.sleep(600)
class Run:
    id, state = "killed-1", "finished"
    def files(self, names=None):
        return [File()]
class Api:
    def runs(self, path):
        return [Run()]
download_runs("me/adarem", Path(sys.argv[1]), api=Api())
"""


def _project(tmp_path, *run_ids) -> FakeApi:
    runs = []
    for run_id in run_ids:
        files = tmp_path / "project" / run_id
        files.mkdir(parents=True)
        (files / "run.json").write_text(json.dumps({"status": "finished", "config": {}}))
        (files / "metrics.jsonl").write_text("")
        runs.append(FakeRun(files, run_id))
    return FakeApi(runs)


def test_a_killed_downloads_staging_folder_is_removed_by_the_next_download_and_a_live_ones_is_not(tmp_path):
    dest = tmp_path / "out" / "wandb_runs"
    assert download_runs("me/adarem", dest, api=_project(tmp_path, "earlier-1")) == []
    with writers(DOWNLOADER, [dest], [dest]) as (killed, live):
        killed_dir, live_dir = staging_of(killed, dest), staging_of(live, dest)
        kill9(killed)
        assert [p.name for p in dest.iterdir()] == ["earlier-1"]  # the earlier download, whole
        assert download_runs("me/adarem", dest, api=_project(tmp_path, "now-1", "now-2")) == []
        assert not killed_dir.exists() and live_dir.is_dir() and live.poll() is None
        assert stagings(dest) == [live_dir]
        assert sorted(p.name for p in dest.iterdir()) == ["now-1", "now-2"]  # no marker inside dest
        assert sorted(p.name for p in dest.parent.iterdir()) == [live_dir.name, "wandb_runs"]  # no old copy left


def test_a_download_whose_staging_folder_was_taken_over_fails_in_one_line_and_keeps_the_earlier_one(tmp_path):
    dest = tmp_path / "out" / "wandb_runs"
    download_runs("me/adarem", dest, api=_project(tmp_path, "earlier-1"))
    api, taken = _project(tmp_path, "now-1"), []

    class TakenOver(FakeFile):  # midway, another writer takes the folder over
        def download(self, *args, **kwargs):
            super().download(*args, **kwargs)
            if not taken:
                taken.append(take_over(dest))

    api._runs[0].files = lambda names=None: [TakenOver(api._runs[0].files_dir / n) for n in names]
    with pytest.raises(OSError, match="removed or replaced by another process") as exc:
        download_runs("me/adarem", dest, api=api)
    assert "\n" not in str(exc.value)
    assert [p.name for p in dest.iterdir()] == ["earlier-1"]
    assert (taken[0] / "content" / "now-1" / "run.json").is_file()
