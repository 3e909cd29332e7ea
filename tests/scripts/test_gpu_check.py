"""scripts/gpu_check.sh --dry-run: every GPU check's steps, on the CPU at tiny sizes, so that the
script that a session with a lent GPU runs cannot rot between such sessions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


# the four device calls of results/bench/README.md (each within one call's time limit on the GPU
# machine): run as four tests, so that the two xdist workers share them (one test took 135 s)
DEVICE_CALLS = ["oracle,cuda_tests,optimizer", "throughput,throughput_compiled", "loaders,decode", "e2e"]


def test_the_device_calls_cover_every_check_once():
    from scripts.gpu_check import CHECKS

    named = [n for call in DEVICE_CALLS for n in call.split(",")]
    assert sorted(named) == sorted(CHECKS) and len(named) == len(set(named))
    readme = (REPO / "results" / "bench" / "README.md").read_text()
    assert all(f"`--only {call}`" in readme for call in DEVICE_CALLS)


@pytest.mark.slow
@pytest.mark.parametrize("call", DEVICE_CALLS)
def test_gpu_check_dry_run_runs_every_check(tmp_path, env, call):
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--only", call], cwd=REPO,
                         env=dict(env, OUT=str(out)), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / f"gpu_check_{call.replace(',', '-')}.json").read_text())
    checks = {c["check"]: c for c in summary["checks"]}
    names = {"throughput": "throughput eager", "throughput_compiled": "throughput compiled"}
    assert set(checks) == {names.get(n, n) for n in call.split(",")}
    assert all(c["ok"] for c in checks.values()), checks
    assert summary["dry_run"] is True and summary["machine"]["device"] == "cpu"
    assert (out / "gpu_check.log").stat().st_size > 0
    # the figures are real measurements, one line each
    if "oracle" in checks:
        assert "passed" in checks["oracle"]["figure"] and "failed" not in checks["oracle"]["figure"]
        assert checks["cuda_tests"]["figure"] == "CUDA-only tests on cpu: 2 skipped"  # no test id has gone stale
        step = {r["optimizer"]: float(r["median_step_ms"]) for r in csv.DictReader(open(out / "optimizer_step_cpu.csv"))}
        assert {"adarem (fused)", "adarem (foreach)", "adamw (fused)"} <= set(step) and all(v > 0 for v in step.values())
    if "e2e" in checks:
        assert "bit-identical weights True" in checks["e2e"]["figure"]
    if "loaders" in checks:
        fed = {r["loader"]: r for r in csv.DictReader(open(out / "throughput_cpu_loaders.csv"))}
        assert {"synthetic", "torch"} <= set(fed) and float(fed["torch"]["relative_to_synthetic"]) > 0
        assert list(csv.DictReader(open(out / "jpeg_decode_cpu.csv")))
    for name in ("throughput_cpu_eager.csv", "throughput_cpu_compile.csv") if "throughput eager" in checks else ():
        assert list(csv.DictReader(open(out / name))), name


def test_gpu_check_without_gpu_says_so(tmp_path, env):
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO,
                         env=dict(env, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES=""), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr and "--dry-run" in res.stderr
    assert not os.path.exists(tmp_path / "gpu_check.json")


def test_gpu_check_rejects_unknown_check(tmp_path, env):
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--only", "nope"], cwd=REPO,
                         env=dict(env, OUT=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown check" in res.stderr and "nope" in res.stderr


def test_gpu_check_optimizer_fails_when_the_fused_path_does_not_run(tmp_path, env):
    """A check that did not measure its headline must not report success: with no C++ compiler
    AdaRem's fused CPU kernel cannot build, bench_optimizer skips the candidate, and --require
    (which gpu_check passes) turns that skip into a failure naming it (was: [ok], exit 0)."""
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--only", "optimizer"],
                         cwd=REPO, env=dict(env, OUT=str(out), CXX="/nonexistent/c++",
                                            TORCH_EXTENSIONS_DIR=str(tmp_path / "ext")),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[FAILED] optimizer" in res.stdout and "0/1 checks ok" in res.stdout
    check = json.loads((out / "gpu_check_optimizer.json").read_text())["checks"][0]
    assert check["ok"] is False and "adarem (fused)" in check["figure"] and "did not run" in check["figure"]


def test_bench_optimizer_require_refuses_an_unknown_candidate(env):
    res = subprocess.run([sys.executable, "scripts/bench_optimizer.py", "--require", "adarem (fusedd)",
                          "--out", os.devnull], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "unknown candidate" in res.stderr and "adarem (fusedd)" in res.stderr
