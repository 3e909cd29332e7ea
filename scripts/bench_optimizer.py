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
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import timm
import torch

from adarem import AdaRem
from adarem.run.record import git_info

SGD_WD, ADAMW_WD, ADAREM_WD = 1e-4, 0.05, 1e-4  # as in configs/optimizer/{sgd,adamw,adarem}.yaml


def groups(params: list, weight_decay: float) -> list[dict]:
    """The harness's split: decay on weights (ndim > 1), none on biases and norm parameters."""
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def candidates(device: str) -> dict:
    """name -> (configuration in words, constructor)."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per candidate")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate (compilation)")
    ap.add_argument("--steps-per-sample", type=int, default=None,
                    help="consecutive steps per timed sample (default 10 on cuda, 1 on cpu)")
    ap.add_argument("--only", default="", help="comma-separated substrings: keep matching candidates")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/optimizer_step[_cuda].csv)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_optimizer: --device cuda asked for but torch.cuda.is_available() is False")
    k = args.steps_per_sample or (10 if args.device == "cuda" else 1)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(args.device)
    base = [p.detach() for p in model.parameters()]
    n_params = sum(p.numel() for p in base)
    param_bytes = sum(p.numel() * p.element_size() for p in base)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    keep = [x for x in args.only.split(",") if x]

    setups = {}
    for name, (setting, make) in candidates(args.device).items():
        if keep and not any(x in name for x in keep + ["adamw"]):
            continue
        params = [torch.nn.Parameter(p.clone()) for p in base]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        try:
            opt = make(params)
            for _ in range(args.warmup):
                opt.step()
        except (RuntimeError, ValueError) as exc:  # e.g. a fused path this build lacks
            print(f"skip {name}: {str(exc).splitlines()[0]}")
            continue
        setups[name] = (setting, opt, [])
    sync()
    for _ in range(args.rounds):
        for name, (_, opt, times) in setups.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(k):
                opt.step()
            sync()
            times.append((time.perf_counter() - t0) / k)

    med = {name: statistics.median(t) for name, (_, _, t) in setups.items()}
    machine = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    rows = [{
        "optimizer": name, "setting": setting,
        "median_step_ms": 1e3 * med[name],
        "min_step_ms": 1e3 * min(times),
        "ratio_to_adamw_fused": med[name] / med["adamw (fused)"] if "adamw (fused)" in med else None,
        "ratio_to_adamw_foreach": med[name] / med["adamw (foreach)"] if "adamw (foreach)" in med else None,
        "state_bytes_per_param_byte": state_bytes(opt) / param_bytes,
        "model": args.model, "n_params": n_params, "device": args.device, "machine": machine,
        "torch": torch.__version__, "rounds": args.rounds, "steps_per_sample": k,
        "date": dt.date.today().isoformat(), **git_info(),
    } for name, (setting, opt, times) in setups.items()]
    df = pd.DataFrame(rows)
    out = Path(args.out or f"results/bench/optimizer_step{'_cuda' if args.device == 'cuda' else ''}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4g")
    print(df[["optimizer", "setting", "median_step_ms", "ratio_to_adamw_fused", "ratio_to_adamw_foreach"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name in ("adarem (fused)", "adarem (foreach)"):
        if name in med and "adamw (fused)" in med:
            print(f"FIGURE optimizer_step {name} recipe: {1e3 * med[name]:.3f} ms = "
                  f"{med[name] / med['adamw (fused)']:.3f}x adamw (fused) on {args.model} ({args.device})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
