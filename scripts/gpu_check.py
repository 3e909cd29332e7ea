"""Every GPU check of the suite in one run (scripts/gpu_check.sh is the entry point).

Each check runs as a subprocess with its own time limit, prints one ``FIGURE`` line, and leaves
its figures under --out; a failing check is recorded and the next one still runs. The checks run
in the order below (of value) within --budget seconds (540 on the GPU): those it leaves are named
for a next call. The summary, with the machine, the versions, the code's commit and each check's
status, figure and time, is --out/gpu_check.json (gpu_check_<check>-<check>....json for a subset
chosen by --only); every subprocess's output goes to the .log of the same name as it comes;
--pack DIR keeps the summary and a tar.gz of --out in DIR after every check.

Checks, in order (``--dry-run``: the same steps on the CPU at tiny sizes, run by the tests):
  loaders     AdaRem's training step on resnet50 fed by the torch loader (and DALI where
              installed) from a tree of real-photo JPEGs, against synthetic data in the same run
  optimizer   scripts/bench_optimizer.py: AdaRem fused/foreach vs torch AdamW and SGD
  oracle      tests/optim/test_adarem_oracle.py on the device: for-loop, foreach and fused
              (Triton on CUDA) paths in fp32, bf16, fp16 and fp64
  cuda_tests  the tests that need CUDA and are skipped elsewhere (CUDA_TESTS): side-stream
              batch staging, no host sync in the oscillation tracker
  throughput  scripts/bench_throughput.py: resnet50, 224 px, batch 256, bf16, channels_last,
              SGD/AdamW/AdaRem through the harness's training step, eager
  e2e         train.py under a single-process torchrun (--nproc-per-node=1): an uninterrupted
              run; the same run stopped by SIGUSR1 and resumed with resume=auto; both must end
              bit-identical. World size 1 creates no process group (adarem/distributed.py makes
              one only for world > 1), so neither NCCL nor gloo is exercised: what it tests is
              train.py launched by torchrun's environment, the stop signal reaching the training
              process, the checkpoint, resume=auto and determinism on the device. NCCL needs two
              ranks on two GPUs (NCCL refuses two ranks on one GPU); the lent machine has one.
  decode      scripts/bench_decode.py: torchvision's GPU JPEG decoder vs the CPU
  throughput_compiled  the throughput check under torch.compile (slowest to compile: last)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")


class Check:
    def __init__(self, out: Path, log, deadline: float | None = None):
        self.out, self.log = out, log
        self.deadline = deadline  # time.monotonic() by which every check must have ended (--budget)
        self.results: list[dict] = []
        self.current: subprocess.Popen | None = None  # the command running now (ended with this process)

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout: float, env: dict | None = None, verify=None) -> str:
        """Run one check; return its output. The check is ok when the command exits 0 and
        ``verify(output)`` (where given) names no problem: a check must not pass on a figure that
        was not measured. The command runs in a process group of its own, its output (stdout and
        stderr) goes to the log line by line as it comes (a call cut short still leaves it), and
        its time is the smaller of ``timeout`` and what --budget leaves; on a timeout the group
        gets SIGABRT first (PYTHONFAULTHANDLER: each Python process prints where it was), then
        SIGKILL, its children included."""
        t0 = time.monotonic()
        # the budget's end, less the time a cut takes (SIGABRT, SIGKILL, the output's end)
        budget_cut = self.time_left() - KILL_S < timeout
        timeout = max(1.0, min(timeout, self.time_left() - KILL_S))
        self.log.write(f"\n===== {name} (limit {timeout:.0f} s): {shlex.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(env or os.environ, PYTHONFAULTHANDLER="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
        lines: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line)
                self.log.write(line)
                self.log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        self.current = proc
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = "timeout"
        finally:
            self.current = None
        reader.join(5)
        output = "".join(lines) + (f"\nTIMEOUT after {timeout:.0f} s" if code == "timeout" else "")
        figures = [line[len("FIGURE "):] for line in output.splitlines() if line.startswith("FIGURE ")]
        figure = "; ".join(figures) or _last_line(output)
        problems = verify(output) if verify is not None and code == 0 else []
        if code == "timeout" and budget_cut:  # not a hang: the call's time ran out (next call --only it)
            self.record(name, None, "; ".join(figures + [f"cut at the budget's end after {timeout:.0f} s"]),
                        time.monotonic() - t0, exit_code=code)
            return output
        if code != 0:  # the reason, as the command named it, next to the figures
            figure = "; ".join(figures + [f"exit {code}: {_reason(output)}"])
        elif problems:
            figure = "; ".join(figures + [f"problems: {'; '.join(problems)}"])
        self.record(name, code == 0 and not problems, figure, time.monotonic() - t0, exit_code=code)
        return output

    def record(self, name: str, ok: bool | None, figure: str, seconds: float, **extra) -> None:
        """``ok`` None: not run, or cut at its end (--budget left too little time for it)."""
        self.results.append({"check": name, "ok": ok, "figure": figure, "seconds": round(seconds, 1), **extra})
        status = "skipped" if ok is None else "ok" if ok else "FAILED"
        print(f"[{status}] {name} ({seconds:.0f} s): {figure}", flush=True)


KILL_S = 12  # what a cut takes at most: SIGABRT and 3 s, SIGKILL and 5 s, the output's end


def end_with_this_process(c: Check) -> None:
    """SIGTERM, SIGINT or SIGHUP to this process (the device tool's timeout, Ctrl-C) ends the running
    check's process group too: in a session of its own, it got none of them, and went on using the
    GPU under the next call."""
    def handler(signum, frame):
        if c.current is not None:
            _kill_group(c.current)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGABRT to the process group (Python's faulthandler prints each process's stack), then
    SIGKILL to what is left: the command and every process it started (torchrun's train.py,
    loader workers), which subprocess.run's timeout left running on the GPU."""
    for sig, wait in ((signal.SIGABRT, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGABRT:  # the leader ended; its children may not have
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    _wait_group_gone(proc.pid, 5.0)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no live process of the group is left: a killed child (orphaned, so not ours to
    reap) runs on for a moment, longer while it writes a core after the SIGABRT, and the next check
    must not share the GPU with it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(0.05)


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (read from /proc; empty where it is absent)."""
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # ended while we read
        if int(group) == pgid and state not in "ZX":
            members.append(int(entry))
    return members


def _reason(output: str) -> str:
    """Why a command failed, as it said it: its last ``error:`` line where it wrote one (torchrun's
    banner of '=' comes after train.py's), else its last line."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    return errors[-1][:300] if errors else _last_line(output)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _pytest(c: Check, name: str, label: str, args: list[str], timeout: float, env: dict | None = None) -> None:
    """Run pytest serially (-p no:xdist) as check ``name``; its figure is ``label``: the summary counts."""
    out = c.run(name, [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
                timeout, env)
    summary = re.findall(r"(\d+ (?:passed|failed|skipped|errors?))", out)
    c.results[-1]["figure"] = f"{label}: " + (", ".join(summary) or c.results[-1]["figure"])


def check_oracle(c: Check, device: str, dry: bool) -> None:
    args = ["tests/optim/test_adarem_oracle.py"] + (["-k", "defaults or float64 or many_groups"] if dry else [])
    _pytest(c, "oracle", f"oracle tests on {device} (loop, foreach, fused; fp32/bf16/fp16/fp64)", args,
            120 if dry else LIMITS_S["oracle"], dict(os.environ, ADAREM_TEST_DEVICE=device))


CUDA_TESTS = ["tests/harness/test_engine.py::test_side_stream_batches_are_the_inline_batches_under_load",
              "tests/results/test_oscillation.py::test_no_host_sync_between_records"]


def check_cuda_tests(c: Check, device: str, dry: bool) -> None:
    _pytest(c, "cuda_tests", f"CUDA-only tests on {device}", CUDA_TESTS, 60 if dry else LIMITS_S["cuda_tests"])
    res = c.results[-1]
    if device == "cuda" and res["ok"] and f"{len(CUDA_TESTS)} passed" not in res["figure"]:
        res["ok"] = False  # skipped on the GPU: nothing was checked (pytest exits 0 on skips)
        res["figure"] += f"; problems: not all {len(CUDA_TESTS)} ran and passed"


# the candidates the optimizer check exists for: their skip (a fused path that did not build, a
# Triton compile failure) fails the check, as does a missing ratio to AdamW (fused or foreach)
OPTIMIZER_REQUIRED = ("adarem (fused)", "adarem (foreach)")


def check_optimizer(c: Check, device: str, dry: bool) -> None:
    # AdaRem's fused path compiles one graph per chunk structure on CUDA (21 for resnet50): the
    # recipe's candidates only (AdaRem fused/foreach/for-loop, SGD, AdamW), not the weight-decay
    # and momentum variants (62 compiles in all)
    args = ["--model", "resnet18", "--rounds", "3", "--warmup", "2", "--only", "adarem (f,sgd"] if dry else \
        ["--rounds", "30", "--warmup", "5", "--only", "adarem (f,sgd"]
    csv_path = c.out / f"optimizer_step_{device}.csv"

    def verify(output: str) -> list[str]:
        import csv

        skipped = [line for line in output.splitlines() if line.startswith("skip ")]
        try:
            rows = {r["optimizer"]: r for r in csv.DictReader(open(csv_path))}
        except OSError as exc:
            return [f"no CSV: {exc}"] + skipped
        problems = []
        for name in OPTIMIZER_REQUIRED:
            col = "ratio_to_adamw_" + ("foreach" if "(foreach)" in name else "fused")
            try:
                float(rows[name][col])
            except (KeyError, ValueError):
                problems.append(f"{name}: no {col}")
        return problems

    c.run("optimizer", [sys.executable, "scripts/bench_optimizer.py", "--device", device, *args,
                        "--require", ",".join(OPTIMIZER_REQUIRED), "--out", str(csv_path)], 120 if dry else LIMITS_S["optimizer"],
          verify=verify)


def _throughput_cmd(device: str, dry: bool) -> list[str]:
    size = ["--model", "small_cnn", "--image-size", "32", "--batch-size", "16", "--steps", "2", "--rounds", "1"] \
        if dry else ["--steps", "15", "--rounds", "3"]
    return [sys.executable, "scripts/bench_throughput.py", "--device", device, *size,
            "--optimizers", "sgd,adamw,adarem", "--no-bare", "--impl", "fused"]


def check_throughput(c: Check, device: str, dry: bool) -> None:
    c.run("throughput eager", _throughput_cmd(device, dry) + ["--out", str(c.out / f"throughput_{device}_eager.csv")],
          120 if dry else LIMITS_S["throughput"])


def check_throughput_compiled(c: Check, device: str, dry: bool) -> None:
    c.run("throughput compiled", _throughput_cmd(device, dry) + [
        "--compile", "--out", str(c.out / f"throughput_{device}_compile.csv")], 180 if dry else LIMITS_S["throughput_compiled"])


def _has_dali() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no "nvidia" package at all
        return False


def check_loaders(c: Check, device: str, dry: bool) -> None:
    """AdaRem's step fed by the torch loader (and DALI where installed) vs synthetic data. 120
    steps a pass, so that a pass's start (empty worker queues, about one batch per worker) is a
    few per cent of it; the workers are bench_throughput's default (the CPUs this process may use,
    minus one)."""
    loaders = "synthetic,torch" + (",dali" if _has_dali() else "")
    size = ["--model", "small_cnn", "--image-size", "32", "--batch-size", "16", "--steps", "2", "--rounds", "1",
            "--workers", "2"] if dry else ["--steps", "120", "--rounds", "3"]
    c.run("loaders", [sys.executable, "scripts/bench_throughput.py", "--device", device, *size,
                      "--optimizers", "adarem", "--no-bare", "--impl", "fused", "--loaders", loaders,
                      "--out", str(c.out / f"throughput_{device}_loaders.csv")], 120 if dry else LIMITS_S["loaders"])


def _descendants(pid: int) -> list[int]:
    """Child processes (recursively) of pid, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def check_e2e(c: Check, device: str, dry: bool) -> None:
    """Single-process torchrun (no process group, so no NCCL/gloo): reference run; stop with
    SIGUSR1 + resume; compare bit for bit."""
    import torch

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_e2e_"))
    args = ["model=small_cnn", "data=synthetic", "data.image_size=32", "data.num_classes=10",
            "data.synthetic_train_size=2560", "data.synthetic_val_size=512", "trainer.batch_size=128",
            "trainer.epochs=2", "trainer.deterministic=true", f"trainer.device={device}",
            f"trainer.amp={'bf16' if device == 'cuda' else 'none'}", f"trainer.channels_last={device == 'cuda'}",
            "optimizer=adarem", "optimizer.fused=true", "logging.wandb=disabled", "logging.progress=lines",
            "trainer.log_every=1", "trainer.checkpoint_every_min=0"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", ADAREM_CACHE=str(tmp / "cache"))

    def cmd(run_dir: Path) -> list[str]:
        return launcher + ["train.py", *args, f"hydra.run.dir={run_dir}"]

    problems = []
    ref = c.run("e2e reference", cmd(tmp / "ref"), 120, env)
    ref_result = c.results.pop()
    if ref_result["ok"] is not True:  # nothing to compare with: the two other runs would only spend time
        c.record("e2e", None if ref_result["ok"] is None else False,
                 f"reference run {'cut' if ref_result['ok'] is None else 'failed'}: {ref_result['figure']}",
                 time.monotonic() - t0)
        return
    # the interrupted run: SIGUSR1 to the training process (not torchrun) after step 5
    c.log.write(f"\n===== e2e interrupted: {shlex.join(cmd(tmp / 'int'))}\n")
    proc = subprocess.Popen(cmd(tmp / "int"), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    c.current = proc  # ended with this process
    watchdog = threading.Timer(max(1.0, min(120.0, c.time_left() - KILL_S)), lambda: _kill_group(proc))
    watchdog.start()
    lines, sent = [], None
    for line in proc.stdout:
        lines.append(line)
        if sent is None and "epoch 0 step 5 " in line:
            for pid in _descendants(proc.pid):
                try:
                    if "train.py" in Path(f"/proc/{pid}/cmdline").read_text():
                        os.kill(pid, signal.SIGUSR1)
                        sent = time.monotonic()
                except OSError:
                    pass
    proc.wait()
    watchdog.cancel()
    c.current = None
    c.log.write("".join(lines))
    run_int = _read_json(tmp / "int" / "run.json")
    if sent is None:
        problems.append("never saw step 5 to signal")
    if run_int.get("status") != "preempted":
        problems.append(f"stopped run has status {run_int.get('status')!r}, not 'preempted'")
    resumed = c.run("e2e resume", cmd(tmp / "int"), 120, env)
    if c.results[-1]["ok"] is not True:
        problems.append("resume failed")
    c.results.pop()
    del ref, resumed
    same_weights = same_metrics = False
    try:
        a = torch.load(tmp / "ref" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
        b = torch.load(tmp / "int" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
        same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
                              for r in rows if r["type"] != "iter"]
        same_metrics = strip(_read_jsonl(tmp / "ref" / "metrics.jsonl")) == strip(_read_jsonl(tmp / "int" / "metrics.jsonl"))
    except (OSError, KeyError, RuntimeError) as exc:
        problems.append(f"cannot compare checkpoints: {exc}")
    if not same_weights:
        problems.append("weights differ after resume")
    if not same_metrics:
        problems.append("epoch metrics differ after resume")
    ref_run, int_run = _read_json(tmp / "ref" / "run.json"), _read_json(tmp / "int" / "run.json")
    final = (ref_run.get("final") or {}).get("val_top1_err")
    ok = not problems and ref_run.get("status") == "finished" and int_run.get("status") == "finished"
    c.record("e2e", ok, f"train.py under single-process torchrun on {device} (world size 1: no process group, "
             f"NCCL/gloo not exercised): stop by SIGUSR1 at step 5 -> "
             f"{run_int.get('status')}, resume -> {int_run.get('status')}, bit-identical weights {same_weights}, "
             f"same epoch metrics {same_metrics}; final top-1 err {final}"
             + (f"; problems: {problems}" if problems else ""), time.monotonic() - t0)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_decode(c: Check, device: str, dry: bool) -> None:
    args = ["--images", "16", "--rounds", "1", "--batch", "8"] if dry else ["--images", "512", "--rounds", "3"]
    c.run("decode", [sys.executable, "scripts/bench_decode.py", "--device", device, *args,
                     "--out", str(c.out / f"jpeg_decode_{device}.csv")], 90 if dry else LIMITS_S["decode"])


# Each check's time limit at full size (s); e2e is three runs of up to 120 s each. A call of this
# script takes at most the sum of its checks' limits plus start-up, and --budget (default 540 s,
# under the device tool's 600 s per command) cuts it: a check starts only with at least MIN_S of
# it left, and runs for what is left at most (results/bench/README.md, GPU section).
LIMITS_S = {"loaders": 270, "optimizer": 200, "oracle": 170, "cuda_tests": 60, "throughput": 120, "e2e": 360,
            "decode": 90, "throughput_compiled": 220}
MIN_S = {"loaders": 150, "optimizer": 120, "oracle": 90, "cuda_tests": 40, "throughput": 90, "e2e": 120,
         "decode": 45, "throughput_compiled": 150}
# in order of value: issue 15's figure (ResNet-50 images/s per loader), the optimizer step on CUDA
# and its correctness there, then the rest; the compiled-model throughput (slowest to compile) last
CHECKS = {"loaders": check_loaders, "optimizer": check_optimizer, "oracle": check_oracle, "cuda_tests": check_cuda_tests,
          "throughput": check_throughput, "e2e": check_e2e, "decode": check_decode,
          "throughput_compiled": check_throughput_compiled}
# what a check needs besides torch: imported before the first check, so that a machine without them
# (a call that did not carry .gpu_deps) ends in seconds, not after a machine start and every check
NEEDS = ("hydra", "omegaconf", "timm", "torchvision", "pandas", "PIL", "pytest")
PHOTOS = ("loaders", "decode")  # the checks that read ADAREM_SAMPLE_PHOTOS' photos


def missing_needs(names: list[str]) -> list[str]:
    import importlib

    missing = []
    for mod in NEEDS:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # noqa: BLE001 - any failure to import is a missing dependency here
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    photos = os.environ.get("ADAREM_SAMPLE_PHOTOS")
    if any(n in PHOTOS for n in names) and photos and not list(Path(photos).glob("*.jpg")):
        missing.append(f"the sample photos in ADAREM_SAMPLE_PHOTOS={photos}")
    return missing


def code_commit() -> dict:
    """The commit of the code that runs: git's where the tree is a checkout; ADAREM_COMMIT (set by
    the command that sent a copy without .git to the device, as results/bench/README.md says) where
    it is not."""
    from adarem.run.record import git_info  # gpu_check.sh puts the repository on PYTHONPATH

    git = git_info()
    if git.get("commit"):
        return git
    given = os.environ.get("ADAREM_COMMIT", "")
    return {"commit": given or None, "dirty": None, "source": "ADAREM_COMMIT" if given else "unknown"}


def machine_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "host_cpus": os.cpu_count(),
            "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for mod in ("torchvision", "timm", "triton", "hydra", "omegaconf"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a missing module is itself a figure
            info[mod] = f"unavailable ({type(exc).__name__})"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def pack(out: Path, into: Path, stem: str) -> None:
    """``into``/<stem>.json (the summary, to read at once) and ``into``/<stem>_files.tar.gz (every
    file of ``out``: CSVs, summaries, the log), each replaced whole (written aside, then renamed)."""
    import shutil
    import tarfile

    into.mkdir(parents=True, exist_ok=True)
    tmp = into / f".{stem}_files.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(out)))
    os.replace(tmp, into / f"{stem}_files.tar.gz")
    shutil.copyfile(out / f"{stem}.json", into / f".{stem}.json.part")
    os.replace(into / f".{stem}.json.part", into / f"{stem}.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    ap.add_argument("--out", required=True, help="folder for the figures (CSV/JSON) and the log")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {list(CHECKS)}, run in "
                    f"this order")
    ap.add_argument("--pack", default="",
                    help="also keep, after every check, the summary and a tar.gz of everything in --out in this folder "
                         "(the device tool returns at most 8 files of $OUT: gpu_check.sh packs there)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds this call may take (default 540 on the GPU, none in a dry run): a check starts only "
                         "with MIN_S of it left and is cut at its end; the skipped ones are named for a next call")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in CHECKS]
    if bad or not names:
        print(f"gpu_check: unknown check(s) {bad or repr(args.only)}; choose from {list(CHECKS)}", file=sys.stderr)
        return 2
    names = [n for n in CHECKS if n in names]  # in the order of value, whatever the order given
    missing = missing_needs(names)
    if missing:
        print(f"gpu_check: missing {'; '.join(missing)}: on the device, carry .gpu_deps (bash scripts/gpu_check.sh "
              f"--build-deps here, then carry=[\".gpu_deps\"])", file=sys.stderr)
        return 2
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is visible; run with --dry-run for the CPU rehearsal", file=sys.stderr)
            return 2
    budget = args.budget if args.budget is not None else (None if args.dry_run else 540.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a call for a subset writes its own summary and log, so that the calls of a split run do not overwrite each other
    stem = "gpu_check" if names == list(CHECKS) else f"gpu_check_{'-'.join(names)}"
    print(f"gpu_check: {', '.join(names)}; their time limits add up to {sum(LIMITS_S[n] for n in names)} s"
          + (f", this call's budget is {budget:.0f} s" if budget else ""), flush=True)
    t0 = time.monotonic()
    summary = {}
    with open(out / f"{stem}.log", "a") as log:
        c = Check(out, log, None if not budget else t0 + budget)
        end_with_this_process(c)
        info = {**machine_info(device), "code": code_commit(), "budget_s": budget}
        print(f"gpu_check on {info.get('gpu', 'cpu (dry run)')}, torch {info['torch']}, code "
              f"{info['code'].get('commit') or 'unknown (set ADAREM_COMMIT)'}", flush=True)
        for name in names:
            left, needs = c.time_left(), 1 if args.dry_run else MIN_S[name]
            if left < needs:
                c.record(name, None, f"not run: {max(left, 0):.0f} s of the budget left, it needs {needs} s", 0.0)
            else:
                try:
                    CHECKS[name](c, device, args.dry_run)
                except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
                    c.record(name, False, f"check crashed: {type(exc).__name__}: {exc}", 0.0)
            # written after every check, so that a run cut short still leaves what it measured
            summary = {"machine": info, "dry_run": args.dry_run, "total_seconds": round(time.monotonic() - t0, 1),
                       "checks_asked": names, "checks": c.results}
            (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
            if args.pack:
                log.flush()
                pack(out, Path(args.pack), stem)
    failed = [r["check"] for r in c.results if r["ok"] is False]
    skipped = [r["check"] for r in c.results if r["ok"] is None]
    ran = len(c.results) - len(skipped)
    print(f"gpu_check: {ran - len(failed)}/{ran} checks ok in {summary['total_seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; not run (budget): {', '.join(skipped)}: next call --only {','.join(skipped)}" if skipped else "")
          + f"; figures in {out}")
    return 1 if failed else 3 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
