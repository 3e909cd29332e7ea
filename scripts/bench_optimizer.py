"""Time optimizer.step() of AdaRem (each path) against SGD-momentum, Adam and AdamW.

The parameter set is timm's resnet50 (25.6 M parameters, 161 tensors) with fixed random
gradients, split as the harness splits it: weights decayed, biases and norm parameters not. Every
optimizer runs with the weight decay its preset trains with (configs/optimizer/*.yaml): SGD and
AdaRem coupled 1e-4, AdamW decoupled 0.05, Adam none; "wd0" rows add AdaRem without weight decay.
The candidates are interleaved round by round in one run (so drift of the machine hits all of
them alike); each sample times several consecutive steps (so that on a GPU the host's launches
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
missing) is skipped with a line ``skip <name>: <reason>``; ``--require NAMES`` turns a skip of
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
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model(), "host_cpus": os.cpu_count(), "usable_cpus": cpus,
            "torch_threads": torch.get_num_threads(), "gpu": gpu or "",
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg_1min_before": round(load_before[0], 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git.get("commit"), "dirty": git.get("dirty"), "diff_sha1": git.get("diff_sha1", ""),
            "command": command}


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
        same = lambda c: _values(old[c]) == _values(df[c])  # noqa: E731
        base = lambda cmd: shlex.join(_without(shlex.split(cmd), REPEAT_FLAGS))  # noqa: E731
        problems = [c for c in ("commit", "dirty", "diff_sha1") if c not in old.columns or not same(c)]
        if "command" not in old.columns or {base(c) for c in old["command"]} != {base(command)}:
            problems.append("command")
        if list(old.columns) != list(df.columns):
            problems.append("columns")
        if problems:
            raise SystemExit(f"--append: {out} was not made by this command at this commit and tree state "
                             f"(differs in: {', '.join(problems)}); write another file")
        df["run"] += int(old["run"].max())
        df = pd.concat([old, df], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4g")
    rows = []
    for name, g in df.groupby(key, sort=False):
        row = {key: name, "runs": g["run"].nunique()}
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").dropna()
            row[f"{m}_median"] = v.median() if len(v) else math.nan
            row[f"{m}_min"] = v.min() if len(v) else math.nan
            row[f"{m}_max"] = v.max() if len(v) else math.nan
        for c in ("commit", "dirty", "cpu_model", "gpu", "torch"):
            row[c] = ";".join(sorted(_values(g[c])))
        row["load_avg_1min_max"] = pd.concat([g["load_avg_1min_before"], g["load_avg_1min_after"]]).max()
        row["command"] = command
        rows.append(row)
    summary = out.with_name(out.stem + "_summary.csv")
    pd.DataFrame(rows).to_csv(summary, index=False, float_format="%.4g")
    print(f"wrote {out} ({df['run'].nunique()} runs) and {summary}")
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
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate (compilation)")
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
    if args.repeats < 1 or args.rounds < 1:
        raise SystemExit("bench_optimizer: --repeats and --rounds must be >= 1")
    out = Path(args.out or f"results/bench/optimizer_step{'_cuda' if args.device == 'cuda' else ''}.csv")
    command = bench_command("bench_optimizer.py")
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
    keep = [x for x in args.only.split(",") if x]

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
        # each round in another order (rotated): a fixed order timed each candidate right after the
        # same neighbour (SGD's fused path after the 120 ms for-loop, every round), its caches and
        # clocks in that neighbour's wake
        for name in names[r % len(names):] + names[:r % len(names)]:
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
        "rounds": args.rounds, "warmup": args.warmup, "steps_per_sample": k, **prov,
    } for name, (setting, opt, times) in setups.items()]
    df = pd.DataFrame(rows)
    print(df[["optimizer", "setting", "median_step_ms", "ratio_to_adamw_fused", "ratio_to_adamw_foreach"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, baseline in (("adarem (fused)", "adamw (fused)"), ("adarem (foreach)", "adamw (foreach)")):
        if name in med and baseline in med:  # each path against AdamW's same path
            print(f"FIGURE optimizer_step {name} recipe: {1e3 * med[name]:.3f} ms = "
                  f"{med[name] / med[baseline]:.3f}x {baseline} on {args.model} ({n_params:,} weights, "
                  f"{args.in_chans} channel(s), {args.num_classes} classes; {args.device}), "
                  f"median of {args.rounds} rounds")
    ratio = lambda n: df.loc[df.optimizer == n, "ratio_to_adamw_" + ("foreach" if "(foreach)" in n else "fused")]  # noqa: E731
    no_ratio = sorted(n for n in need if not pd.to_numeric(ratio(n), errors="coerce").between(0, math.inf).all()
                      or ratio(n).empty)
    if no_ratio:
        raise SystemExit(f"bench_optimizer: FAILED: no ratio to AdamW for required candidate(s) {no_ratio}")
    return df


def _print_summary(df: pd.DataFrame) -> None:
    runs = df["run"].nunique()
    for name in ("adarem (fused)", "adarem (foreach)"):
        col = "ratio_to_adamw_" + ("fused" if "(fused)" in name else "foreach")
        v = df.loc[df.optimizer == name, col].dropna()
        if len(v):
            print(f"FIGURE optimizer_step {name} over {runs} runs: {v.median():.3f}x adamw "
                  f"{col.rsplit('_', 1)[1]} (range {v.min():.3f}-{v.max():.3f})")


if __name__ == "__main__":
    main()
