"""scripts/gpu_check.sh --dry-run: every GPU check's steps, on the CPU at tiny sizes, so that the
script that a session with a lent GPU runs cannot rot between such sessions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


# The dry run in four calls, so that the two xdist workers share them (one call took 135 s); on the
# device one call runs every check in order of value within its budget (results/bench/README.md)
DEVICE_CALLS = ["optimizer,oracle,cuda_tests", "throughput,throughput_compiled", "loaders,decode", "e2e"]


def test_the_dry_run_calls_cover_every_check_once_and_the_readme_documents_the_device_call():
    from scripts.gpu_check import CHECKS, LIMITS_S, MIN_S

    named = [n for call in DEVICE_CALLS for n in call.split(",")]
    assert sorted(named) == sorted(CHECKS) and len(named) == len(set(named))
    assert set(LIMITS_S) == set(MIN_S) == set(CHECKS) and all(MIN_S[n] <= LIMITS_S[n] for n in CHECKS)
    readme = (REPO / "results" / "bench" / "README.md").read_text()
    assert "ADAREM_COMMIT=" in readme and "--budget" in readme


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
    assert (out / f"gpu_check_{call.replace(',', '-')}.log").stat().st_size > 0  # a log per call, not one overwritten
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


def test_a_call_runs_what_its_budget_allows_and_names_the_rest(tmp_path, env):
    """The device lends 15 minutes in all and 600 s a command: a call whose checks' limits add up
    to more ran on until the tool killed it, leaving what it had not written."""
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--only", "e2e,cuda_tests",
                          "--budget", "0.5"], cwd=REPO, env=dict(env, OUT=str(out)), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "[skipped] cuda_tests" in res.stdout and "[skipped] e2e" in res.stdout
    assert "not run (budget): cuda_tests, e2e: next call --only cuda_tests,e2e" in res.stdout, res.stdout
    summary = json.loads((out / "gpu_check_cuda_tests-e2e.json").read_text())
    assert [c["ok"] for c in summary["checks"]] == [None, None] and summary["machine"]["budget_s"] == 0.5
    assert summary["machine"]["code"]["commit"]  # the commit the figures are of


def test_a_missing_dependency_ends_the_call_before_any_check(tmp_path, env):
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--only", "loaders"], cwd=REPO,
                         env=dict(env, OUT=str(tmp_path), ADAREM_SAMPLE_PHOTOS=str(tmp_path)), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "missing the sample photos" in res.stderr and "carry .gpu_deps" in res.stderr
    assert not list(tmp_path.iterdir())


def test_a_check_cut_at_its_limit_leaves_its_output_and_no_process(tmp_path):
    """subprocess.run's timeout killed the command alone (torchrun's train.py went on, on the GPU)
    and dropped what it had printed to stderr; the log was written only when a check ended."""
    from scripts.gpu_check import Check, _live_members, _reason

    with open(tmp_path / "log", "w") as log:
        c = Check(tmp_path, log)
        output = c.run("t", ["bash", "-c", "sleep 60 & echo child=$! group=$$; echo to stderr >&2; wait"],
                       timeout=2)
        logged = (tmp_path / "log").read_text()
    assert c.results[-1]["ok"] is False and c.results[-1]["exit_code"] == "timeout"
    assert "to stderr" in output and "to stderr" in logged
    child = int(output.split("child=")[1].split()[0])
    # run() returns only once the group is gone: a SIGABRTed child writing its core was still
    # running ('R') when this was read right after the kill (CI, stop 37)
    assert child not in _live_members(child_group := int(output.split("group=")[1].split()[0])), child_group
    assert _reason("error: trainer.device=cuda but no CUDA device\n=====\nfailed") == \
        "error: trainer.device=cuda but no CUDA device"  # train.py's line, not torchrun's banner


def test_the_device_call_packs_its_figures_into_a_few_files(tmp_path, env):
    """The device tool returns at most 8 files of $OUT; a full call writes a dozen: the figures are
    packed after every check into the summary and one tar.gz, so none is left out."""
    import tarfile

    res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--only", "cuda_tests",
                          "--out", str(tmp_path / "work"), "--pack", str(tmp_path / "OUT")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in (tmp_path / "OUT").iterdir()) == ["gpu_check_cuda_tests.json",
                                                                     "gpu_check_cuda_tests_files.tar.gz"]
    with tarfile.open(tmp_path / "OUT" / "gpu_check_cuda_tests_files.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["gpu_check_cuda_tests.json", "gpu_check_cuda_tests.log"]


def test_a_check_cut_by_the_budget_is_named_for_the_next_call_not_failed(tmp_path):
    """A check that started with its MIN_S left but less than its limit, and ran out: a cut, not a
    hang; it was reported FAILED, and the next-call line left it out (helper-86)."""
    from scripts.gpu_check import KILL_S, Check

    with open(tmp_path / "log", "w") as log:
        c = Check(tmp_path, log, deadline=time.monotonic() + KILL_S + 2)
        c.run("slow", ["sleep", "30"], timeout=60)
    assert c.results[-1]["ok"] is None and "cut at the budget's end" in c.results[-1]["figure"]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a live process, None where gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[3])


def _alive_in_sessions(sessions: set[int]) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        st = _stat(int(name)) if name.isdigit() else None
        if st is not None and st[2] in sessions and st[0] != "Z":
            found.append(int(name))
    return found


def test_ending_gpu_check_ends_the_check_it_runs(tmp_path, env):
    """Each check runs in a session of its own: a SIGTERM to gpu_check (the device tool's timeout)
    left it running, on the GPU, under the next call (helper-86)."""
    import signal

    proc = subprocess.Popen([sys.executable, "scripts/gpu_check.py", "--dry-run", "--only", "e2e", "--out",
                             str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline, sessions = time.monotonic() + 120, set()
        while time.monotonic() < deadline and not sessions:  # the check: a child of gpu_check, in its own session
            sessions = {int(n) for n in os.listdir("/proc") if n.isdigit()
                        and (_stat(int(n)) or ("", 0, 0))[1] == proc.pid and (_stat(int(n)) or ("", 0, 0))[2] == int(n)}
            time.sleep(0.2)
        assert sessions, "no check started"
        time.sleep(3)  # under way: torchrun and its train.py
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(1)
        assert not _alive_in_sessions(sessions)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
