"""scripts/export_runs.py: compact copies of run records whose tables are the originals' tables."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

from adarem.results import CLAIMS_FILE, load_runs, write_report
from adarem.results import export
from adarem.results.export import export_runs
from tests.conftest import REPO
from tests.results.test_tables import make_run
from tests.test_fsync import kill9, stagings, staging_of, take_over, writers


def _study(root):
    """Two optimizers x 3 seeds with per-layer oscillation lines, checkpoints and lock files."""
    for opt, base in (("sgd", 10.0), ("adarem", 9.0)):
        for seed in range(3):
            d = make_run(root / "final" / opt, f"s{seed}", opt, seed, [base + 3, base + 1 + seed / 10, base + seed / 10],
                         osc=[0.5 - seed / 100, 0.4, 0.3])
            lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for line in lines:
                if line["type"] == "oscillation":
                    line.update(per_layer={"w": 0.1}, per_layer_efficiency={"w": 0.9}, path_efficiency=0.5)
            (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            (d / "checkpoint.pt").write_bytes(b"x" * 1000)
            (d / ".lock").write_text("")
    return root


def test_export_keeps_what_the_tables_read_and_drops_checkpoints_and_per_layer_data(tmp_path):
    src = _study(tmp_path / "runs")
    dest = tmp_path / "results" / "runs"
    assert export_runs(src, dest) == 6
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted(f"final/{o}/s{s}/{n}" for o in ("sgd", "adarem") for s in range(3)
                           for n in ("run.json", "metrics.jsonl"))
    original = src / "final" / "sgd" / "s1"
    assert (dest / "final" / "sgd" / "s1" / "run.json").read_bytes() == (original / "run.json").read_bytes()
    copied = [json.loads(x) for x in (dest / "final" / "sgd" / "s1" / "metrics.jsonl").read_text().splitlines()]
    before = [json.loads(x) for x in (original / "metrics.jsonl").read_text().splitlines()]
    assert len(copied) == len(before)
    for a, b in zip(copied, before):
        assert a == {k: v for k, v in b.items() if k not in ("per_layer", "per_layer_efficiency")}
    # the same tables, claims and plots' data from either copy
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    write_report(load_runs(src), out_a, CLAIMS_FILE, "test")
    write_report(load_runs(dest), out_b, CLAIMS_FILE, "test")
    for name in ("claims.csv", "test_error.csv", "oscillation.csv", "speed.csv"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name


def test_export_never_writes_into_an_existing_directory_and_says_so_in_one_line(tmp_path):
    src = _study(tmp_path / "runs")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "scripts" / "export_runs.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    res = run(str(src), str(dest))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    res = run(str(tmp_path / "nope"), str(tmp_path / "new"))
    assert res.returncode == 2 and "nope" in res.stderr and not (tmp_path / "new").exists()
    res = run(str(src), str(tmp_path / "new"))
    assert res.returncode == 0 and "exported 6 runs" in res.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.")]  # no staging left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not mkdtemp's 0700
    # the installed package's way in does the same
    res = subprocess.run([sys.executable, "-m", "adarem.results.export", str(src), str(tmp_path / "again")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (tmp_path / "again" / "final" / "sgd" / "s0" / "run.json").is_file()


def test_a_line_that_does_not_parse_is_copied_byte_for_byte(tmp_path):
    src = _study(tmp_path / "runs")
    metrics = src / "final" / "sgd" / "s0" / "metrics.jsonl"
    bad = b'{"type": "epoch", "epoch": 9, "tr\xff\xfe\n'  # a torn write with a byte that is not UTF-8
    metrics.write_bytes(metrics.read_bytes() + bad)
    export_runs(src, tmp_path / "dest")
    assert (tmp_path / "dest" / "final" / "sgd" / "s0" / "metrics.jsonl").read_bytes().endswith(bad)


# --- a killed export's staging folder is removed by the next export to DEST, a live one's never ------------

EXPORTER = """
import shutil, sys, time
from pathlib import Path
real_copy = shutil.copy2
def copy_then_block(src, dst, **kwargs):  # one run's record copied, then stopped there
    real_copy(src, dst, **kwargs)
    print(dst, flush=True)
    time.sleep(600)
shutil.copy2 = copy_then_block
from adarem.results.export import export_runs
export_runs(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export_and_a_live_ones_is_not(tmp_path):
    src = _study(tmp_path / "runs")
    dest = tmp_path / "results" / "runs"
    with writers(EXPORTER, [src, dest], [src, dest]) as (killed, live):
        killed_dir, live_dir = staging_of(killed, dest), staging_of(live, dest)
        kill9(killed)
        assert not dest.exists() and any(p.name == "run.json" for p in killed_dir.rglob("*"))
        assert export_runs(src, dest) == 6
        assert not killed_dir.exists() and live_dir.is_dir() and live.poll() is None
        assert stagings(dest) == [live_dir]
        assert sorted(p.name for p in dest.iterdir()) == ["final"]  # no marker inside DEST
        assert len(list(dest.rglob("run.json"))) == 6


def test_an_export_whose_staging_folder_was_taken_over_fails_in_one_line_and_makes_no_dest(tmp_path, monkeypatch):
    src = _study(tmp_path / "runs")
    dest = tmp_path / "dest"
    real_copy, taken = shutil.copy2, []

    def copy_then_taken_over(src_file, dst, **kwargs):  # midway, another writer takes the folder over
        real_copy(src_file, dst, **kwargs)
        if not taken:
            taken.append(take_over(dest))

    monkeypatch.setattr(shutil, "copy2", copy_then_taken_over)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert export.main([str(src), str(dest)]) == 2
    assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, err.getvalue()
    assert "removed or replaced by another process" in err.getvalue()
    assert not dest.exists() and len(list(taken[0].rglob("run.json"))) == 6  # the copy was complete
