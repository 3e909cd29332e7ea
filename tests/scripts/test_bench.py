"""The bench scripts' honesty: a check that compares, compares; every file a command writes can be
written again by that command (runs, appends, summaries) and says what produced it; a cached photo
tree is never reused for other parameters."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.conftest import REPO

SCRIPTS = REPO / "scripts"
PROVENANCE = {"cpu_model", "host_cpus", "usable_cpus", "torch_threads", "torch", "load_avg_1min_before",
              "load_avg_1min_after", "date", "commit", "dirty", "diff_sha1", "command"}


def _script(name: str):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def test_decode_check_compares_every_image_against_a_tolerance():
    bench_decode = _script("bench_decode")
    g = torch.Generator().manual_seed(0)
    cpu = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g) for _ in range(3)]
    near = [(c.int() + torch.randint(-1, 2, c.shape, generator=g)).clamp(0, 255).to(torch.uint8) for c in cpu]
    diff = bench_decode.decode_difference(cpu, near)
    assert diff["worst_image_mean_abs_diff"] < 1 and diff["max_abs_diff"] <= 1
    assert bench_decode.decode_problems(diff, 2.0) == []
    # one image off by 3 levels everywhere: its mean (3) is over the tolerance, the others' are not
    far = near[:2] + [(cpu[2].int() + 3).clamp(max=255).to(torch.uint8)]
    problems = bench_decode.decode_problems(bench_decode.decode_difference(cpu, far), 2.0)
    assert len(problems) == 1 and "not below the tolerance 2.0" in problems[0]
    # a shape that differs, or nothing compared, fails too
    assert any("shapes differ" in p for p in bench_decode.decode_problems(
        bench_decode.decode_difference(cpu, near[:2] + [near[2][:, :-1]]), 2.0))
    assert bench_decode.decode_problems(bench_decode.decode_difference([], []), 2.0)


def test_cached_photo_tree_refuses_a_tree_made_with_other_parameters(tmp_path):
    from adarem.data.photo_tree import cached_photo_tree

    kw = dict(classes=2, train_per_class=3, val_per_class=1, size_range=(60, 90))
    root = cached_photo_tree(tmp_path / "tree", unique_per_class=2, **kw)
    assert cached_photo_tree(tmp_path / "tree", unique_per_class=2, **kw) == root  # same parameters: reused
    for other in (dict(size_range=(100, 140)), dict(seed=1), dict(quality=70), dict(train_per_class=4)):
        with pytest.raises(ValueError, match="other parameters"):
            cached_photo_tree(tmp_path / "tree", unique_per_class=2, **{**kw, **other})
    with pytest.raises(ValueError, match="other parameters"):
        cached_photo_tree(tmp_path / "tree", unique_per_class=3, **kw)
    (root / "photo_tree.json").unlink()  # a tree of unknown making
    with pytest.raises(ValueError, match="no readable photo_tree.json"):
        cached_photo_tree(tmp_path / "tree", unique_per_class=2, **kw)


def _runs(commit="a" * 40, command="python scripts/x.py --rounds 3", value=1.0):
    return pd.DataFrame([{"run": 1, "optimizer": n, "ratio": value * k, "cpu_model": "cpu", "gpu": "",
                          "torch": "2", "load_avg_1min_before": 0.1, "load_avg_1min_after": 0.2,
                          "commit": commit, "dirty": False, "diff_sha1": "", "command": command}
                         for k, n in ((1, "a"), (2, "b"))])


def test_write_runs_numbers_appended_runs_and_refuses_another_commit_or_command(tmp_path):
    bench_optimizer = _script("bench_optimizer")
    out = tmp_path / "o.csv"
    cmd = "python scripts/x.py --rounds 3"
    bench_optimizer.write_runs(_runs(), out, False, "optimizer", ["ratio"], cmd)
    bench_optimizer.write_runs(_runs(value=3.0), out, True, "optimizer", ["ratio"], cmd + " --append")
    df = pd.read_csv(out)
    assert sorted(df["run"].unique()) == [1, 2]
    summary = pd.read_csv(tmp_path / "o_summary.csv").set_index("optimizer")
    assert summary.loc["a", "runs"] == 2 and summary.loc["a", "ratio_min"] == 1 and summary.loc["a", "ratio_max"] == 3
    assert summary.loc["b", "ratio_median"] == 4
    with pytest.raises(SystemExit, match="differs in: commit"):
        bench_optimizer.write_runs(_runs(commit="b" * 40), out, True, "optimizer", ["ratio"], cmd)
    with pytest.raises(SystemExit, match="differs in: command"):
        bench_optimizer.write_runs(_runs(command="python scripts/x.py --rounds 4"), out, True, "optimizer",
                                   ["ratio"], "python scripts/x.py --rounds 4")
    assert len(pd.read_csv(out)) == 4  # refused appends wrote nothing
    # without --append the file is written anew
    bench_optimizer.write_runs(_runs(), out, False, "optimizer", ["ratio"], cmd)
    assert list(pd.read_csv(out)["run"].unique()) == [1]


def test_bench_optimizer_repeats_in_fresh_processes_and_records_provenance(tmp_path, env):
    out = tmp_path / "step.csv"
    base = [sys.executable, "scripts/bench_optimizer.py", "--model", "test_resnet", "--rounds", "3", "--warmup", "1",
            "--only", "adarem (fused)", "--require", "adarem (fused)", "--out", str(out)]
    res = subprocess.run(base + ["--repeats", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.count("=== run ") == 2 and "over 2 runs" in res.stdout
    df = pd.read_csv(out)
    assert sorted(df["run"].unique()) == [1, 2] and PROVENANCE <= set(df.columns)
    assert {"rounds", "warmup", "steps_per_sample", "model"} <= set(df.columns)
    # with the environment's thread setting (the tests' OMP_NUM_THREADS=1): the bare command, retyped,
    # measured every core (helper-83)
    assert (df["command"] == "OMP_NUM_THREADS=1 python scripts/bench_optimizer.py " + " ".join(
        f"'{a}'" if " " in a else a for a in base[2:] + ["--repeats", "2"])).all()
    assert df["cpu_model"].str.len().min() > 0 and df["commit"].str.len().eq(40).all()
    res = subprocess.run(base + ["--append"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(pd.read_csv(out)["run"].unique()) == [1, 2, 3]
    summary = pd.read_csv(tmp_path / "step_summary.csv").set_index("optimizer")
    assert summary.loc["adarem (fused)", "runs"] == 3
    lo, mid, hi = (summary.loc["adarem (fused)", f"ratio_to_adamw_fused_{k}"] for k in ("min", "median", "max"))
    assert 0 < lo <= mid <= hi


def test_bench_throughput_records_steps_tracker_and_provenance(tmp_path, env):
    out = tmp_path / "tp.csv"
    res = subprocess.run([sys.executable, "scripts/bench_throughput.py", "--model", "small_cnn", "--image-size", "32",
                          "--batch-size", "8", "--steps", "2", "--rounds", "1", "--optimizers", "adarem",
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    df = pd.read_csv(out).set_index("candidate")
    row = df.loc["harness:adarem"]
    assert PROVENANCE <= set(row.index)
    assert row["run"] == 1 and row["steps"] == 2 and row["rounds"] == 1 and row["oscillation_every"] == 10
    assert "oscillation_every=10" in res.stdout
    # the overhead over the bare loop splits into the tracker's share and the rest
    assert sorted(df.index) == ["bare:adarem", "harness:adarem", "harness_no_tracker:adarem"]
    assert df.loc["harness_no_tracker:adarem", "oscillation_every"] == 0
    assert df.loc[["harness:adarem", "harness_no_tracker:adarem"], "relative_to_bare_adarem"].notna().all()
    assert "of which without the oscillation tracker" in res.stdout


def test_bench_throughput_times_the_studys_net_in_both_memory_layouts(tmp_path, env):
    """The Fashion-MNIST study's trial (two_conv_net, 1 channel, 10 classes, width 16) as train.py
    builds it, channels_last against the same step in the contiguous layout, in one run."""
    out = tmp_path / "tp.csv"
    res = subprocess.run([sys.executable, "scripts/bench_throughput.py", "--model", "two_conv_net", "--num-classes",
                          "10", "--in-chans", "1", "--model-kwargs", '{"width": 8}', "--image-size", "28",
                          "--batch-size", "8", "--steps", "2", "--rounds", "1", "--optimizers", "adarem", "--no-bare",
                          "--channels-last", "yes", "--other-layout", "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    df = pd.read_csv(out).set_index("candidate")
    assert sorted(df.index) == ["harness:adarem", "harness:adarem@contiguous"]
    assert df.loc["harness:adarem", "channels_last"] and not df.loc["harness:adarem@contiguous", "channels_last"]
    assert (df["in_chans"] == 1).all() and (df["num_classes"] == 10).all()
    ratio = df.loc["harness:adarem", "images_per_s"] / df.loc["harness:adarem@contiguous", "images_per_s"]
    assert df.loc["harness:adarem", "relative_to_other_layout"] == pytest.approx(ratio, rel=1e-2)  # CSV rounds
    assert "channels_last/other = " in res.stdout
    bad = subprocess.run([sys.executable, "scripts/bench_throughput.py", "--model-kwargs", "{width: 8}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--model-kwargs='{width: 8}' is not JSON" in bad.stderr


def test_a_bench_script_refuses_the_package_of_another_checkout(tmp_path, env):
    """A clone run with another clone's editable install on the path would time that clone's code
    under this clone's command (found when a benchmark of a clean clone came out dirty): one line,
    exit 2, before anything is measured. With this checkout's package it starts (--help)."""
    import shutil

    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    shutil.copytree(REPO / "adarem", other / "adarem", ignore=shutil.ignore_patterns("__pycache__"))
    for script in ("bench_optimizer.py", "bench_throughput.py"):
        res = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True,
                             env=dict(env, PYTHONPATH=str(other)), timeout=120)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another checkout, {other}" in lines[0] and f"PYTHONPATH={REPO}" in lines[0], res.stderr
    res = subprocess.run([sys.executable, str(SCRIPTS / "bench_optimizer.py"), "--help"], capture_output=True,
                         text=True, env=dict(env, PYTHONPATH=str(REPO)), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_each_round_runs_the_candidates_after_other_neighbours():
    """A rotation of one order kept every candidate right after the same one (helper-96: SGD's
    fused path after the slow for-loop in 14 of 15 rounds): each round is now its own seeded
    order, the same in every process (ranks under torchrun must agree on it)."""
    bench_optimizer = _script("bench_optimizer")
    names = [f"c{i}" for i in range(13)]
    orders = [bench_optimizer.round_order(names, r) for r in range(15)]
    assert all(sorted(o) == sorted(names) for o in orders) and orders == [bench_optimizer.round_order(names, r) for r in range(15)]
    for name in names:
        before = [o[o.index(name) - 1] if o.index(name) else None for o in orders]
        assert max(before.count(b) for b in set(before)) <= 5, (name, before)


@pytest.mark.parametrize("script, args, message", [
    ("bench_optimizer", ["--out", "{tmp}/nodir/x.csv"], "there is no directory"),
    ("bench_optimizer", ["--out", "{tmp}/notes.txt"], "must name a .csv file"),
    ("bench_optimizer", ["--out", "{tmp}/mine.csv"], "is not a CSV of bench_optimizer"),
    ("bench_optimizer", ["--out", "{tmp}/o_summary.csv"], "that is not a summary"),
    ("bench_optimizer", ["--append", "--out", "{tmp}/x.csv"], "is not a CSV of bench_optimizer"),  # x_summary.csv
    ("bench_optimizer", ["--append", "--repeats", "2", "--out", "{tmp}/old.csv"], "(differs in: commit"),
    ("bench_optimizer", ["--only", "adarem (fused),nosuchopt"], "['nosuchopt'] match(es) no candidate"),
    ("bench_optimizer", ["--steps-per-sample", "0"], "--steps-per-sample=0 must be >= 1"),
    ("bench_optimizer", ["--warmup", "0"], "--warmup=0 must be >= 1"),
    ("bench_throughput", ["--rounds", "0"], "--rounds=0 must be >= 1"),
    ("bench_throughput", ["--steps", "0"], "--steps=0 must be >= 1"),
    ("bench_throughput", ["--out", "{tmp}/mine.csv"], "is not a CSV of bench_throughput"),
    ("bench_data", ["--rounds", "0"], "--rounds=0 must be >= 1"),
    ("bench_data", ["--out", "{tmp}/mine.csv"], "is not a CSV of bench_data"),
    ("bench_decode", ["--out", "{tmp}/mine.csv"], "is not a CSV of bench_decode"),
])
def test_bench_scripts_refuse_bad_input_before_measuring(tmp_path, env, script, args, message):
    """Bad input was accepted (a missing folder made, a user's CSV overwritten, an unknown --only
    name measured nothing new, 0 taken for a default), crashed after the warm-up, or hung
    (bench_data --rounds 0): each is now one line and exit 1, before anything is measured, and
    an existing file is left as it was."""
    mine = tmp_path / "mine.csv"
    mine.write_text("name,score\nalice,3\n")
    (tmp_path / "x.csv").write_text("run,optimizer,command\n1,a,python scripts/bench_optimizer.py\n")
    (tmp_path / "x_summary.csv").write_text("name,score\nalice,3\n")  # --append checks the summary too
    (tmp_path / "old.csv").write_text("run,optimizer,commit,dirty,diff_sha1,command\n"  # another commit's runs
                                      "1,a,0123456789012345678901234567890123456789,False,,python scripts/x.py\n")
    res = subprocess.run([sys.executable, f"scripts/{script}.py", *(a.format(tmp=tmp_path) for a in args)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert mine.read_text() == (tmp_path / "x_summary.csv").read_text() == "name,score\nalice,3\n"
    assert not (tmp_path / "nodir").exists() and len((tmp_path / "old.csv").read_text().splitlines()) == 2
    assert "=== run" not in res.stdout and "wrote" not in res.stdout


def test_a_candidate_that_cannot_run_is_a_row_that_says_why(tmp_path, env):
    """With no working compiler, AdaRem's fused CPU kernel cannot be built: the command exited 0
    with a normal-looking CSV and summary that lacked every AdaRem-fused row (helper-96). The
    candidate is now a row without figures whose column skipped says why, in both files, and
    the command warns."""
    out = tmp_path / "step.csv"
    res = subprocess.run([sys.executable, "scripts/bench_optimizer.py", "--model", "test_resnet", "--rounds", "1",
                          "--warmup", "1", "--only", "adarem (fused)", "--out", str(out)], cwd=REPO,
                         env=dict(env, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext")),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = pd.read_csv(out).set_index("optimizer").loc["adarem (fused)"]
    assert "C++ kernel" in row["skipped"] and pd.isna(row["median_step_ms"]) and pd.isna(row["ratio_to_adamw_fused"])
    summary = pd.read_csv(tmp_path / "step_summary.csv").set_index("optimizer")
    assert summary.loc["adarem (fused)", "runs"] == 0 and "C++ kernel" in summary.loc["adarem (fused)", "skipped"]
    assert summary.loc["adamw (fused)", "runs"] == 1
    assert "warning: not measured" in res.stderr and "adarem (fused)" in res.stderr


def test_appended_runs_count_only_where_they_measured_and_files_keep_the_umask(tmp_path, env):
    """helper-97: a FIGURE line over runs that skipped the candidate said "over 3 runs" for one
    measurement; the files written through a temporary came out owner-only (0600)."""
    out = tmp_path / "step.csv"
    base = [sys.executable, "scripts/bench_optimizer.py", "--model", "test_resnet", "--rounds", "1", "--warmup", "1",
            "--only", "adarem (fused)", "--out", str(out)]
    no_kernel = dict(env, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    res = subprocess.run(base, cwd=REPO, env=no_kernel, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run(base + ["--repeats", "2", "--append"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "adarem (fused) over 2 runs" in res.stdout, res.stdout[-2000:]
    summary = pd.read_csv(tmp_path / "step_summary.csv").set_index("optimizer")
    assert summary.loc["adarem (fused)", "runs"] == 2 and summary.loc["adamw (fused)", "runs"] == 3
    assert (out.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_default_out_is_the_scripts_checkout_wherever_it_is_run_from(tmp_path):
    bench_optimizer = _script("bench_optimizer")
    assert bench_optimizer.default_out("x.csv") == REPO / "results" / "bench" / "x.csv"
