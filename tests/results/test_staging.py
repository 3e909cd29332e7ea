"""Reading exactly a comparison's own run directories, and writing a report through one staging
folder that a killed writer does not leave behind for good."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

import adarem.results.report as report
from adarem import fsync
from adarem.protocol import cli
from adarem.results import CLAIMS_FILE, load_runs, write_report
from tests.conftest import REPO
from tests.results.test_tables import make_run

# --- load_runs(run_dirs=...): exactly the given directories ------------------------------------------


def test_load_runs_reads_exactly_the_given_run_dirs_named_as_given(tmp_path):
    """Two runs config_id cannot tell apart (trainer.oscillation_every differs): on the whole tree the
    first started wins; given the newer one alone, it is read, named as given, once."""
    root = tmp_path / "final"
    make_run(root, "older", "sgd", 0, [30.0, 20.0, 10.0], trainer={"oscillation_every": 10},
             start="2026-01-01T00:00:00")
    newer = make_run(root, "newer", "sgd", 0, [30.0, 20.0, 12.0], trainer={"oscillation_every": 0},
                     start="2026-02-01T00:00:00")
    assert load_runs(root, newest_comparison=False).subset([newer]).runs.empty  # the twin displaces it
    (tmp_path / "link").symlink_to(newer, target_is_directory=True)
    (tmp_path / "not_a_run").mkdir()
    given = [str(newer), str(newer), str(tmp_path / "link"), str(tmp_path / "gone"), str(tmp_path / "not_a_run")]
    for rs in (load_runs(run_dirs=given, newest_comparison=False), cli.load_own_runs(given)):
        assert list(rs.runs.run_dir) == [str(newer)] and list(rs.runs.final_top1) == [12.0]
        assert set(rs.evals.run_dir) == {str(newer)} and set(rs.iters.run_dir) == {str(newer)}
        assert rs.problems == [{"run_dir": str(tmp_path / "gone"), "problem": "no run directory: excluded"},
                               {"run_dir": str(tmp_path / "not_a_run"),
                                "problem": "no run record (run.json, metrics.jsonl): excluded"}]
    # the first spelling of a directory names it
    assert list(load_runs(run_dirs=[str(tmp_path / "link"), str(newer)]).runs.run_dir) == [str(tmp_path / "link")]
    # within the given list, the twin logic stands: the first started of the two is kept
    both = load_runs(run_dirs=[str(newer), str(root / "older")])
    assert list(both.runs.run_dir) == [str(root / "older")]
    said = both.problems_frame.set_index("run_dir").problem[str(newer)]
    # how the twin was trained otherwise is said (helper-83: a rerun with the tracker, or after a code
    # fix, was dropped as a plain "duplicate")
    assert "duplicate of" in said and "; trainer.oscillation_every 0, the kept one 10)" in said, said
    with pytest.raises(TypeError):
        load_runs(root, run_dirs=[str(newer)])
    with pytest.raises(TypeError):
        load_runs()


# --- compare's report: one staging folder --------------------------------------------------------------


def _finals(root):
    dirs = []
    for s in range(3):
        dirs.append(str(make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 9.0 + 0.1 * s])))
        dirs.append(str(make_run(root, f"adarem{s}", "adarem", s, [30.0, 14.0, 8.0 + 0.1 * s])))
    return dirs


def _selection(dirs):
    rows = [dict(optimizer=opt, lr=lr, weight_decay=0.0, seed=1000, stage="select", status="finished",
                 score=20.0 - lr, chosen=lr == 0.1, holdout_loss=0.5, run_dir="x", commit="c", dirty=False)
            for opt in ("sgd", "adarem") for lr in (0.01, 0.1)]
    rows += [dict(optimizer=d.rsplit("/", 1)[1][:-1], lr=0.1, weight_decay=0.0, seed=int(d[-1]), stage="final",
                  status="finished", score=9.0, chosen=True, holdout_loss=float("nan"), run_dir=d, commit="c",
                  dirty=False) for d in dirs]
    return pd.DataFrame(rows)


def _user_out(tmp_path):
    out = tmp_path / "results"
    (out / "runs" / "r").mkdir(parents=True)
    (out / "plots").mkdir()
    before = {"README.md": "the user's readme", "notes.txt": "the user's", "runs/r/run.json": "{}",
              "tables.md": "old tables", "selection.csv": "old selection",
              "oscillation.csv": "an older report's", "plots/curves_gone.png": "an older report's"}
    for name, text in before.items():
        (out / name).write_text(text)
    return out, before


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compares_report_is_staged_once_and_keeps_every_guarantee(tmp_path, monkeypatch):
    """compare staged its report and write_report staged it again inside: every file moved twice,
    through two hidden staging folders."""
    dirs = _finals(tmp_path / "runs" / "final")
    rs, selection = cli.load_own_runs(dirs), _selection(dirs)
    out, before = _user_out(tmp_path)
    snapshot = _tree(out)

    # midway failure: out/ is left exactly as it was, and no staging folder is left
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_curves", full_disk)
    with pytest.raises(OSError):
        cli.write_comparison_report(out, rs, selection, "compare", "## Provenance\n")
    assert _tree(out) == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "runs"]
    monkeypatch.undo()

    real_replace, moves, stagings = os.replace, [], []

    def replace(src, dst):  # the real move, recorded, with the staging folders present at that moment
        moves.append(os.path.relpath(dst, out) if str(dst).startswith(str(out) + os.sep) else "elsewhere")
        stagings.append(sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    text = cli.write_comparison_report(out, rs, selection, "compare", "## Provenance\n")
    monkeypatch.undo()
    assert "## Provenance" in text and (out / "tables.md").read_text() == text
    assert "elsewhere" not in moves and len(moves) == len(set(moves)), moves  # every file moved once, into out
    assert {"tables.md", "selection.csv", "test_error.csv", "claims.csv", "plots/selection_lr.png"} <= set(moves)
    assert moves[-2:] == ["selection.csv", "tables.md"]
    assert all(len(s) == 1 for s in stagings), stagings  # one staging folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # OWNED files it did not write are removed; the README, runs/ and the user's files are not
    after = _tree(out)
    assert "oscillation.csv" not in after and "plots/curves_gone.png" not in after
    for name in ("README.md", "notes.txt", "runs/r/run.json"):
        assert after[name] == before[name].encode()
    assert ".writer.json" not in after


# --- a killed report's staging folder is removed by the next report, a live one's never ------------------

CHILD = """
import sys, time
from pathlib import Path
from adarem.results.report import staged_output
with staged_output(Path(sys.argv[1])) as staging:
    (staging / "tables.md").write_text("half a report")
    print(staging, flush=True)
    time.sleep(600)
"""


def _writer_inside_staging(out):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    staging = proc.stdout.readline().strip()
    assert staging, "the writer did not start"
    return proc, staging


def test_a_killed_reports_staging_folder_is_removed_by_the_next_report_and_a_live_ones_is_not(tmp_path):
    root = tmp_path / "runs"
    for s in range(2):
        make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 9.0 + 0.1 * s])
    out = tmp_path / "out"
    killed, killed_dir = _writer_inside_staging(out)
    live, live_dir = _writer_inside_staging(out)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert os.path.isdir(killed_dir) and os.path.isfile(os.path.join(killed_dir, "tables.md"))
        old = time.time() - 2 * 24 * 3600

        def hand_made(name, marker=None, age=None):
            d = tmp_path / f".out.staging-{name}"
            d.mkdir()
            if marker is not None:
                (d / ".writer.json").write_text(json.dumps(marker))
            if age is not None:
                for p in (*d.iterdir(), d):
                    os.utime(p, (age, age))
            return d

        unmarked_new = hand_made("unmark01")  # a writer between making its folder and its marker
        unmarked_old = hand_made("unmark02", age=old)
        elsewhere = {"host": socket.gethostname() + "-other", "pid": 1}
        other_host_new = hand_made("otherh01", elsewhere)
        other_host_old = hand_made("otherh02", elsewhere, age=old)
        not_ours = tmp_path / ".out.staging-old-copy"  # not a name staged_output makes: left alone
        not_ours.mkdir()

        write_report(load_runs(root), out, CLAIMS_FILE, "make_tables")
        assert (out / "tables.md").read_text().startswith("# Results")
        assert not os.path.exists(killed_dir)
        assert not unmarked_old.exists() and not other_host_old.exists()
        assert os.path.isdir(live_dir) and os.path.isfile(os.path.join(live_dir, "tables.md"))
        assert unmarked_new.is_dir() and other_host_new.is_dir() and not_ours.is_dir()
        assert live.poll() is None
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    # the live writer, killed in its turn, is a dead one for the next report
    write_report(load_runs(root), out, CLAIMS_FILE, "make_tables")
    assert not os.path.exists(live_dir)


def test_a_writer_on_another_machine_of_the_same_name_is_not_judged_dead_and_a_removed_staging_moves_nothing(
        tmp_path):
    """helper-47: two machines named alike share the default pid namespace's inode, so a report
    running on the other one looked like a dead process here and its staging folder was removed;
    that report then moved nothing and removed out/'s tables but tables.md. The kernel's boot id
    tells the machines apart (unaskable: the 24 h rule), and a report whose staging folder went
    away fails without touching out/."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tables.md").write_text("old tables")
    (out / "test_error.csv").write_text("old csv")
    stage = report.staged_output(out)
    content = stage.__enter__()
    (content / "tables.md").write_text("new tables")
    (content / "test_error.csv").write_text("new csv")
    folder = content.parent  # the staging folder: the marker beside what the report writes
    assert folder.name.startswith(".out.staging-") and folder.parent == tmp_path
    marker = json.loads((folder / ".writer.json").read_text())
    assert marker["boot_id"]
    other_machine = dict(marker, pid=4_000_000 - 7, boot_id="another-boot")  # no such pid here
    (folder / ".writer.json").write_text(json.dumps(other_machine))
    assert fsync.remove_dead_stagings(out) == [] and folder.is_dir()  # cannot tell: kept (24 h rule)
    (folder / ".writer.json").write_text(json.dumps(dict(other_machine, boot_id=marker["boot_id"])))
    assert fsync.remove_dead_stagings(out) == [folder]  # this machine, a pid that is gone: dead
    with pytest.raises(OSError, match="removed or replaced by another process"):
        stage.__exit__(None, None, None)
    assert sorted(p.name for p in out.iterdir()) == ["tables.md", "test_error.csv"]
    assert (out / "tables.md").read_text() == "old tables" and (out / "test_error.csv").read_text() == "old csv"


def test_a_report_whose_staging_folder_was_taken_over_moves_nothing(tmp_path):
    """The folder is still there, with another writer's marker (one that judged this report dead):
    nothing is moved into out/, no OWNED file there is removed, and the folder is left to its new
    owner."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tables.md").write_text("old tables")
    (out / "speed.csv").write_text("old csv")  # OWNED, not in the new report: removed only on success
    with pytest.raises(OSError, match="removed or replaced by another process") as exc:
        with report.staged_output(out) as staging:
            (staging / "tables.md").write_text("new tables")
            (folder,) = tmp_path.glob(".out.staging-*")
            (folder / ".writer.json").write_text(json.dumps({"host": socket.gethostname() + "-other", "pid": 1}))
    assert "\n" not in str(exc.value)
    assert (out / "tables.md").read_text() == "old tables" and (out / "speed.csv").read_text() == "old csv"
    assert (folder / "content" / "tables.md").read_text() == "new tables"


def test_two_reports_into_one_out_land_one_after_the_other(tmp_path):
    """A report moves its files in under an exclusive flock on out/ itself: while another holds it
    (a second compare.py finishing into the same out=), nothing of this report lands beside the
    other's files, and once it is released the whole report does."""
    import fcntl
    import threading

    root = tmp_path / "runs"
    for s, last in enumerate([10.0, 12.0, 11.0]):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, last])
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # the other report, moving its files in
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (write_report(load_runs(root), out, CLAIMS_FILE, "test"), done.set()))
    writer.start()
    try:
        time.sleep(3)
        assert not done.is_set() and sorted(p.name for p in out.iterdir()) == []
    finally:
        os.close(fd)
    writer.join(60)
    assert done.is_set() and (out / "tables.md").is_file() and (out / "test_error.csv").is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no lock file left behind
