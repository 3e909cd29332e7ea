"""Time optimizer.step() of AdaRem (each path) against SGD-momentum, Adam and AdamW.

The parameter set is timm's resnet50 (25.6 M parameters, 161 tensors) with fixed random
gradients, split as the harness splits it: weights decayed, biases and norm parameters not. Every
optimizer runs with the weight decay its preset trains with (configs/optimizer/*.yaml): SGD and
AdaRem coupled 1e-4, AdamW decoupled 0.05, Adam none; "wd0" rows add AdaRem without weight decay.
The candidates are interleaved round by round in one run (so drift of the machine hits all of
them alike), each round in another seeded order (``round_order``: no candidate always follows the
same one); each sample times several consecutive steps (so that on a GPU the host's launches
overlap the device's work, as in training). The table reports the median step time, the ratio to
AdamW (fused and foreach), and the optimizer-state bytes per parameter byte.

    python scripts/bench_optimizer.py                    # CPU, writes results/bench/optimizer_step.csv
    python scripts/bench_optimizer.py --device cuda      # writes results/bench/optimizer_step_cuda.csv
    python scripts/bench_optimizer.py --repeats 8        # 8 runs, each in a fresh process

Absolute times move between processes (new memory, other work on the machine), more than the
ratios of one interleaved run do; ``--repeats N`` runs the whole measurement N times, each in a
fresh process, one after the other, and writes every run's rows (column ``run``) to --out and the
median and range over the runs to ``<out>_summary.csv``. ``--append`` adds the new runs to an
existing file instead (refused unless that file was made by the same command at the same commit
and tree state), and rewrites the summary over all of its runs. Every row records its provenance:
commit and dirty flag (with a hash of the uncommitted diff), the exact command, the CPU model,
threads, torch version and the 1-min load average before and after the run.

A candidate that fails to build or step (a fused path this build lacks, a compiler that is
missing) is skipped with a line ``skip <name>: <reason>`` and written as a row without figures
whose column ``skipped`` holds the reason (in the summary too), with a warning at the end; ``--require NAMES`` turns a skip of
one of NAMES, or a ratio of one of them to AdamW that cannot be computed, into a failure (exit 1,
the reason named), for checks such as scripts/gpu_check.py that must not report a figure that
was not measured.

This file also holds the provenance and repeat helpers that the other bench_*.py scripts import.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import adarem
from adarem.run.record import cpu_model, git_info


def refuse_another_checkouts_package() -> None:
    """Exit 2 when these scripts import the adarem of another git checkout (an editable install of
    one clone, run from another without PYTHONPATH): the figures would time that checkout's code,
    recorded under its commit and diff, while the command and script are this one's."""
    here = Path(__file__).resolve().parents[1]
    package_root = Path(adarem.__file__).resolve().parents[1]
    if not os.path.samefile(package_root, here) and (package_root / ".git").exists():  # samefile: a bind mount
        print(f"error: {Path(__file__).resolve().parent} imports adarem from another checkout, {package_root}; "
              f"run with PYTHONPATH={here} (or pip install -e {here}) so that the benchmark times this checkout",
              file=sys.stderr)
        sys.exit(2)


refuse_another_checkouts_package()  # on import: every bench script imports this module before it measures

SGD_WD, ADAMW_WD, ADAREM_WD = 1e-4, 0.05, 1e-4  # as in configs/optimizer/{sgd,adamw,adarem}.yaml


def groups(params: list, weight_decay: float) -> list[dict]:
    """The harness's split: decay on weights (ndim > 1), none on biases and norm parameters."""
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def candidates(device: str) -> dict:
    """name -> (configuration in words, constructor)."""
    from adarem import AdaRem

    c = {
        "sgd_momentum (fused)": (f"momentum 0.9, wd {SGD_WD} coupled",
                                 lambda p: torch.optim.SGD(groups(p, SGD_WD), lr=0.1, momentum=0.9, fused=True)),
        "sgd_momentum (foreach)": (f"momentum 0.9, wd {SGD_WD} coupled",
                                   lambda p: torch.optim.SGD(groups(p, SGD_WD), lr=0.1, momentum=0.9, foreach=True)),
        "adam (fused)": ("no wd", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
        "adamw (fused)": (f"wd {ADAMW_WD} decoupled",
                          lambda p: torch.optim.AdamW(groups(p, ADAMW_WD), lr=1e-3, fused=True)),
        "adamw (foreach)": (f"wd {ADAMW_WD} decoupled",
                            lambda p: torch.optim.AdamW(groups(p, ADAMW_WD), lr=1e-3, foreach=True)),
        "adarem (fused)": (f"recipe: wd {ADAREM_WD} coupled",
                           lambda p: AdaRem(groups(p, ADAREM_WD), lr=0.1, fused=True)),
        "adarem (foreach)": (f"recipe: wd {ADAREM_WD} coupled",
                             lambda p: AdaRem(groups(p, ADAREM_WD), lr=0.1, foreach=True)),
        "adarem wd0 (fused)": ("no wd", lambda p: AdaRem(p, lr=0.1, fused=True)),
        "adarem wd0 (foreach)": ("no wd", lambda p: AdaRem(p, lr=0.1, foreach=True)),
        "adarem decoupled (fused)": (f"wd {ADAMW_WD} decoupled", lambda p: AdaRem(
            groups(p, ADAMW_WD), lr=0.1, decoupled_weight_decay=True, fused=True)),
        "adarem_m (fused)": (f"momentum 0.9, wd {ADAREM_WD} coupled",
                             lambda p: AdaRem(groups(p, ADAREM_WD), lr=0.01, momentum=0.9, fused=True)),
        "adarem_m (foreach)": (f"momentum 0.9, wd {ADAREM_WD} coupled",
                               lambda p: AdaRem(groups(p, ADAREM_WD), lr=0.01, momentum=0.9, foreach=True)),
    }
    if device == "cpu":
        c["adarem (for-loop)"] = (f"recipe: wd {ADAREM_WD} coupled",
                                  lambda p: AdaRem(groups(p, ADAREM_WD), lr=0.1, foreach=False))
    return c


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of per-parameter state tensors (0-dim bookkeeping such as `step` included)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values()
               for v in st.values() if torch.is_tensor(v))


# ---------------------------------------------------------------- shared by the bench_*.py scripts

# The environment variables that change what a benchmark measures (threads): part of its command
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def bench_command(script: str, argv: list[str] | None = None) -> str:
    """The command line that produced a file, as it can be typed again: with the thread settings
    of its environment (OMP_NUM_THREADS=1 measured one thread; the bare command, retyped, measures
    every core)."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in THREAD_VARS if k in os.environ]
    return " ".join(env + [f"python scripts/{script}", shlex.join(sys.argv[1:] if argv is None else argv)]).rstrip()


def provenance(load_before: tuple[float, float, float], command: str, gpu: str | None = None) -> dict:
    """Columns every bench CSV carries: what ran (commit, dirty flag and the uncommitted diff's
    hash, command), where (CPU model, CPUs, torch threads, GPU), with what (python, torch), when,
    and how busy the machine was (1-min load average before the measurement and now)."""
    git = git_info()
    return {"cpu_model": cpu_model(), "host_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu or "",
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg_1min_before": round(load_before[0], 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git.get("commit"), "dirty": git.get("dirty"), "diff_sha1": git.get("diff_sha1", ""),
            "command": command}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as a cgroup or taskset sets it), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def round_order(items: list, r: int) -> list:
    """Round ``r``'s order of the candidates: a shuffle seeded by ``r``, new every round and the same
    in every process (ranks under torchrun take the same order). A rotation of one order would keep
    each candidate right after the same neighbour every round (helper-96: SGD's fused path after the
    120 ms for-loop in 14 of 15 rounds), in that neighbour's wake of caches and clocks."""
    order = list(items)
    random.Random(1_000_003 * (r + 1)).shuffle(order)
    return order


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + "_summary.csv")


REPO = Path(__file__).resolve().parents[1]


def default_out(name: str) -> Path:
    """``results/bench/<name>`` of this script's checkout (the one whose code it times), wherever
    it is run from: relative to the working folder, a run from another checkout wrote there."""
    return REPO / "results" / "bench" / name


def check_out(out: Path, script: str, key: str, summary: bool = True, append: bool = False,
              command: str | None = None) -> None:
    """Refuse, before measuring, an --out this bench cannot write as its own: not a .csv (or one
    named as a summary), in a directory that does not exist, a directory, or an existing file (or
    its summary) that is not this bench's CSV (columns ``key`` and ``command``), which would be
    overwritten; with ``append``, an existing file another command, commit or tree state made
    (``append_problems``: write_runs checks it again, with the columns, after measuring)."""
    if out.suffix != ".csv" or (summary and out.stem.endswith("_summary")):
        raise SystemExit(f"{script}: --out={out} must name a .csv file"
                         + (f" that is not a summary (each goes beside its file, {summary_path(Path('x.csv')).name} "
                            f"for x.csv)" if summary else ""))
    if not out.parent.is_dir():
        raise SystemExit(f"{script}: --out={out}: there is no directory {out.parent}; create it first")
    for path in [out] + ([summary_path(out)] if summary else []):
        if path.is_dir():
            raise SystemExit(f"{script}: --out={out}: {path} is a directory; name a .csv file")
        if path.exists():
            try:
                header = set(pd.read_csv(path, nrows=0).columns)
            except (ValueError, OSError, UnicodeDecodeError):
                header = set()
            if not {key, "command"} <= header:
                raise SystemExit(f"{script}: --out={out}: {path} exists and is not a CSV of {script} (no {key!r} and "
                                 f"'command' columns), which this run would overwrite; choose another --out")
    if append and out.exists():
        git = git_info()
        problems = append_problems(pd.read_csv(out), {"commit": git.get("commit"), "dirty": git.get("dirty"),
                                                      "diff_sha1": git.get("diff_sha1", "")}, command or "")
        if problems:
            raise SystemExit(f"{script}: --append: {out} was not made by this command at this commit and tree state "
                             f"(differs in: {', '.join(problems)}); write another file")


def append_problems(old: pd.DataFrame, new: dict, command: str) -> list[str]:
    """What keeps runs made at ``new`` (its commit, dirty and diff_sha1 values) by ``command`` from
    joining the runs file ``old``: every run of one file is one command at one commit and tree state."""
    same = lambda c: _values(old[c]) == _values(pd.Series([new[c]], dtype=object))  # noqa: E731
    base = lambda cmd: shlex.join(_without(shlex.split(cmd), REPEAT_FLAGS))  # noqa: E731
    problems = [c for c in ("commit", "dirty", "diff_sha1") if c not in old.columns or not same(c)]
    if "command" not in old.columns or {base(c) for c in old["command"]} != {base(command)}:
        problems.append("command")
    return problems


def write_csv_files(frames: dict) -> None:
    """Write each DataFrame to its path, all or none: every file goes to a temporary beside it
    first, and only once all are written are they moved in (a crash leaves the old files)."""
    staged = []
    try:
        for path, df in frames.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((tmp, path))
            df.to_csv(tmp, index=False, float_format="%.4g")
        mask = os.umask(0)
        os.umask(mask)
        for tmp, _ in staged:  # mkstemp makes them owner-only: as a new file of this process would be
            os.chmod(tmp, 0o666 & ~mask)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _without(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """argv less the options in ``flags`` (name -> takes a value)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in a
            continue
        out.append(a)
    return out


def _skipped(df: pd.DataFrame) -> pd.Series:
    """The rows of a candidate that did not run (column ``skipped`` holds why; absent: none)."""
    if "skipped" not in df:
        return pd.Series(False, index=df.index)
    return df["skipped"].fillna("").astype(str) != ""


def _values(col: pd.Series) -> set[str]:
    return {"" if pd.isna(v) else str(v) for v in col}


REPEAT_FLAGS = {"--repeats": True, "--append": False, "--out": True}


def run_repeats(script: Path, argv: list[str], repeats: int) -> pd.DataFrame:
    """Run ``script argv`` ``repeats`` times, each in a fresh process, one after the other; return
    every run's rows with a column ``run`` (1..repeats). A failed run fails the whole command."""
    base = _without(argv, REPEAT_FLAGS)
    frames = []
    with tempfile.TemporaryDirectory(prefix="bench_repeats_") as tmp:
        for i in range(1, repeats + 1):
            part = Path(tmp) / f"run{i}.csv"
            cmd = [sys.executable, str(script), *base, "--repeats", "1", "--out", str(part)]
            print(f"=== run {i}/{repeats}: {shlex.join(cmd[1:])}", flush=True)
            res = subprocess.run(cmd)
            if res.returncode != 0:
                raise SystemExit(f"{script.name}: run {i} of {repeats} failed (exit {res.returncode}); nothing written")
            frames.append(pd.read_csv(part).drop(columns=["run"], errors="ignore").assign(run=i))
    return pd.concat(frames, ignore_index=True)


def write_runs(df: pd.DataFrame, out: Path, append: bool, key: str, metrics: list[str], command: str) -> pd.DataFrame:
    """Write the runs in ``df`` (column ``run``) to ``out`` and their summary to
    ``<out stem>_summary.csv``: per ``key`` (a candidate), the median, min and max over runs of each
    of ``metrics``. ``append``: add them to ``out``'s runs (numbered after them), only if ``out``
    was made by the same command (less --repeats/--append) at the same commit and tree state."""
    df = df.copy()
    df["command"] = command
    cols = ["run"] + [c for c in df.columns if c != "run"]
    df = df[cols]
    if append and out.exists():
        old = pd.read_csv(out)
        problems = []
        for c in ("commit", "dirty", "diff_sha1"):  # one value each in the new runs
            if c not in df.columns or len(_values(df[c])) != 1:
                problems.append(c)
        if not problems:
            problems = append_problems(old, {c: df[c].iloc[0] for c in ("commit", "dirty", "diff_sha1")}, command)
        if list(old.columns) != list(df.columns):
            problems.append("columns")
        if problems:
            raise SystemExit(f"--append: {out} was not made by this command at this commit and tree state "
                             f"(differs in: {', '.join(problems)}); write another file")
        df["run"] += int(old["run"].max())
        df = pd.concat([old, df], ignore_index=True)
    rows = []
    for name, g in df.groupby(key, sort=False):
        # runs that measured it: a skipped candidate's rows (column skipped) hold no figure
        measured = g[~_skipped(g)]
        row = {key: name, "runs": measured["run"].nunique()}
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").dropna()
            row[f"{m}_median"] = v.median() if len(v) else math.nan
            row[f"{m}_min"] = v.min() if len(v) else math.nan
            row[f"{m}_max"] = v.max() if len(v) else math.nan
        # the path each optimizer ran (impl=auto may pick another where a kernel is missing) and
        # why a candidate was not measured: in the summary too, not only in the runs file
        for c in ("commit", "dirty", "cpu_model", "gpu", "torch", "optimizer_path", "skipped"):
            if c in g:
                row[c] = ";".join(sorted(_values(g[c]) - ({""} if c == "skipped" else set())))
        row["load_avg_1min_max"] = pd.concat([g["load_avg_1min_before"], g["load_avg_1min_after"]]).max()
        row["command"] = command
        rows.append(row)
    summary = summary_path(out)
    write_csv_files({out: df, summary: pd.DataFrame(rows)})
    print(f"wrote {out} ({df['run'].nunique()} runs) and {summary}")
    if _skipped(df).any():
        not_run = df[_skipped(df)].drop_duplicates(key)
        print("warning: not measured (rows with an empty figure and the reason in column skipped): "
              + "; ".join(f"{n} ({why})" for n, why in zip(not_run[key], not_run["skipped"])), file=sys.stderr)
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="resnet50", help="a model name as train.py's model.name (timm, "
                    "torchvision.<name>, or this suite's two_conv_net / small_cnn)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--model-kwargs", default="{}", help='JSON, as model.kwargs (e.g. \'{"width": 16}\')')
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per candidate")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate (state, compilation; >= 1)")
    ap.add_argument("--steps-per-sample", type=int, default=None,
                    help="consecutive steps per timed sample (default 10 on cuda, 1 on cpu)")
    ap.add_argument("--only", default="", help="comma-separated substrings: keep matching candidates")
    ap.add_argument("--require", default="",
                    help="comma-separated candidate names (exact, e.g. 'adarem (fused)') that must run: a skip, "
                         "or a missing ratio to adamw (fused) (or adamw (foreach) for a foreach candidate), "
                         "fails the command (exit 1)")
    ap.add_argument("--repeats", type=int, default=1, help="whole measurements, each in a fresh process")
    ap.add_argument("--append", action="store_true", help="add the runs to --out's runs (same command and commit)")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/optimizer_step[_cuda].csv)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_optimizer: --device cuda asked for but torch.cuda.is_available() is False")
    for flag, value in (("--repeats", args.repeats), ("--rounds", args.rounds), ("--warmup", args.warmup),
                        ("--steps-per-sample", 1 if args.steps_per_sample is None else args.steps_per_sample)):
        if value < 1:
            raise SystemExit(f"bench_optimizer: {flag}={value} must be >= 1"
                             + (" (the untimed first steps allocate the state and compile)" if flag == "--warmup" else ""))
    keep = [x for x in args.only.split(",") if x]
    names = list(candidates(args.device))
    unmatched = [x for x in keep if not any(x in n for n in names)]
    if unmatched:
        raise SystemExit(f"bench_optimizer: --only={args.only!r}: {unmatched} match(es) no candidate; candidates: {names}")
    required(args.require, names)  # an unknown name: refused before anything else
    out = Path(args.out) if args.out else default_out(f"optimizer_step{'_cuda' if args.device == 'cuda' else ''}.csv")
    command = bench_command("bench_optimizer.py")
    check_out(out, "bench_optimizer", "optimizer", append=args.append, command=command)
    metrics = ["median_step_ms", "ratio_to_adamw_fused", "ratio_to_adamw_foreach"]
    if args.repeats > 1:
        df = run_repeats(Path(__file__).resolve(), sys.argv[1:], args.repeats)
        df = write_runs(df, out, args.append, "optimizer", metrics, command)
        _print_summary(df)
        return
    df = measure(args, command)
    df = write_runs(df.assign(run=1), out, args.append, "optimizer", metrics, command)
    if df["run"].nunique() > 1:
        _print_summary(df)


def required(names: str, available: list[str]) -> set[str]:
    """--require's candidates and the AdamW baselines their ratios need."""
    req = {n.strip() for n in names.split(",") if n.strip()}
    unknown = req - set(available)
    if unknown:
        raise SystemExit(f"bench_optimizer: --require names unknown candidate(s) {sorted(unknown)}; "
                         f"candidates: {available}")
    if req:
        req.add("adamw (fused)")
    if any("(foreach)" in n for n in req):
        req.add("adamw (foreach)")
    return req


def measure(args, command: str) -> pd.DataFrame:
    import json

    from adarem.models import build_model

    load_before = os.getloadavg()
    cands = candidates(args.device)
    need = required(args.require, list(cands))
    k = args.steps_per_sample or (10 if args.device == "cuda" else 1)
    torch.manual_seed(0)
    # as train.py builds it: the Fashion-MNIST study's net is --model two_conv_net --num-classes 10
    # --in-chans 1 --model-kwargs '{"width": 16}' (215 k weights in 11 tensors)
    try:
        kwargs = json.loads(args.model_kwargs)
    except ValueError as exc:
        raise SystemExit(f"bench_optimizer: --model-kwargs={args.model_kwargs!r} is not JSON ({exc}); write it as "
                         f"'{{\"width\": 16}}'") from None
    model = build_model(args.model, args.num_classes, args.in_chans, kwargs=kwargs).to(args.device)
    base = [p.detach() for p in model.parameters()]
    n_params = sum(p.numel() for p in base)
    param_bytes = sum(p.numel() * p.element_size() for p in base)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    keep = [x for x in args.only.split(",") if x]  # checked in main

    setups, skipped = {}, {}
    for name, (setting, make) in cands.items():
        if keep and not any(x in name for x in keep + ["adamw"]):
            if name in need:
                raise SystemExit(f"bench_optimizer: FAILED: {name!r} is required (--require) but --only "
                                 f"{args.only!r} leaves it out")
            continue
        params = [torch.nn.Parameter(p.clone()) for p in base]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        try:
            opt = make(params)
            for _ in range(args.warmup):
                opt.step()
        except Exception as exc:  # noqa: BLE001 - e.g. a fused path this build lacks, a compiler missing
            skipped[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            print(f"skip {name}: {skipped[name]}", flush=True)
            continue
        setups[name] = (setting, opt, [])
    missing = sorted(need & set(skipped))
    if missing:
        raise SystemExit("bench_optimizer: FAILED: required candidate(s) did not run: "
                         + "; ".join(f"{n} ({skipped[n]})" for n in missing))
    sync()
    names = list(setups)
    for r in range(args.rounds):
        # each round in another order (round_order): a fixed order timed each candidate right after
        # the same neighbour, its caches and clocks in that neighbour's wake
        for name in round_order(names, r):
            _, opt, times = setups[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(k):
                opt.step()
            sync()
            times.append((time.perf_counter() - t0) / k)

    med = {name: statistics.median(t) for name, (_, _, t) in setups.items()}
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    prov = provenance(load_before, command, gpu)
    rows = [{
        "optimizer": name, "setting": setting,
        "median_step_ms": 1e3 * med[name],
        "min_step_ms": 1e3 * min(times),
        "ratio_to_adamw_fused": med[name] / med["adamw (fused)"] if "adamw (fused)" in med else None,
        "ratio_to_adamw_foreach": med[name] / med["adamw (foreach)"] if "adamw (foreach)" in med else None,
        "state_bytes_per_param_byte": state_bytes(opt) / param_bytes,
        "model": args.model, "model_kwargs": args.model_kwargs, "num_classes": args.num_classes, "in_chans": args.in_chans, "n_params": n_params, "device": args.device,
        "rounds": args.rounds, "warmup": args.warmup, "steps_per_sample": k, "skipped": "", **prov,
    } for name, (setting, opt, times) in setups.items()]
    # a candidate that could not run is a row without figures that says why, in the CSV and its
    # summary: the headline's absence is never silent (a compiler missing dropped every AdaRem-fused row)
    rows += [{"optimizer": name, "setting": cands[name][0], "model": args.model, "model_kwargs": args.model_kwargs,
              "num_classes": args.num_classes, "in_chans": args.in_chans, "n_params": n_params, "device": args.device,
              "rounds": args.rounds, "warmup": args.warmup, "steps_per_sample": k, "skipped": why, **prov}
             for name, why in skipped.items()]
    df = pd.DataFrame(rows)
    print(df[["optimizer", "setting", "median_step_ms", "ratio_to_adamw_fused", "ratio_to_adamw_foreach"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name in ("adarem (fused)", "adarem (foreach)"):
        if name in med and "adamw (fused)" in med:  # against torch's fastest path; foreach also against AdamW's foreach
            same = (f"; {med[name] / med['adamw (foreach)']:.3f}x adamw (foreach)"
                    if "(foreach)" in name and "adamw (foreach)" in med else "")
            print(f"FIGURE optimizer_step {name} recipe: {1e3 * med[name]:.3f} ms = "
                  f"{med[name] / med['adamw (fused)']:.3f}x adamw (fused){same} on {args.model} ({n_params:,} weights, "
                  f"{args.in_chans} channel(s), {args.num_classes} classes; {args.device}), "
                  f"median of {args.rounds} rounds")
    ratio = lambda n: df.loc[df.optimizer == n, "ratio_to_adamw_" + ("foreach" if "(foreach)" in n else "fused")]  # noqa: E731
    no_ratio = sorted(n for n in need if not pd.to_numeric(ratio(n), errors="coerce").between(0, math.inf).all()
                      or ratio(n).empty)
    if no_ratio:
        raise SystemExit(f"bench_optimizer: FAILED: no ratio to AdamW for required candidate(s) {no_ratio}")
    return df


def _print_summary(df: pd.DataFrame) -> None:
    for name, col in (("adarem (fused)", "ratio_to_adamw_fused"), ("adarem (foreach)", "ratio_to_adamw_fused"),
                      ("adarem (foreach)", "ratio_to_adamw_foreach")):
        v = df.loc[df.optimizer == name, col].dropna()
        runs = df.loc[v.index, "run"].nunique()  # the runs that measured it (not one that skipped it)
        if len(v):
            print(f"FIGURE optimizer_step {name} over {runs} runs: {v.median():.3f}x adamw "
                  f"{col.rsplit('_', 1)[1]} (range {v.min():.3f}-{v.max():.3f})")


if __name__ == "__main__":
    main()
