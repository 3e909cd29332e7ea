"""Time optimizer.step() of AdaRem (each path) against SGD-momentum, Adam and AdamW.

The parameter set is timm's resnet50 (25.6 M parameters) with fixed random gradients. The
candidates are interleaved round by round in one run (so drift of the machine hits all of them
alike), and the table reports the median step time, the ratio to AdamW (foreach), and the
optimizer-state bytes per parameter byte.

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


def candidates(device: str) -> dict:
    c = {
        "sgd_momentum (foreach)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
        "adam (foreach)": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "adamw (foreach)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, foreach=True),
        "adam (fused)": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "adamw (fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, fused=True),
        "adarem (for-loop)": lambda p: AdaRem(p, lr=0.1, foreach=False),
        "adarem (foreach)": lambda p: AdaRem(p, lr=0.1, foreach=True),
        "adarem (fused)": lambda p: AdaRem(p, lr=0.1, fused=True),
        "adarem_m (foreach)": lambda p: AdaRem(p, lr=0.1, momentum=0.9, foreach=True),
        "adarem_m (fused)": lambda p: AdaRem(p, lr=0.1, momentum=0.9, fused=True),
    }
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
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/optimizer_step[_cuda].csv)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_optimizer: --device cuda asked for but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(args.device)
    base = [p.detach() for p in model.parameters()]
    n_params = sum(p.numel() for p in base)
    param_bytes = sum(p.numel() * p.element_size() for p in base)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    setups = {}
    for name, make in candidates(args.device).items():
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
        setups[name] = (opt, [])
    sync()
    for _ in range(args.rounds):
        for name, (opt, times) in setups.items():
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            times.append(time.perf_counter() - t0)

    ref = statistics.median(setups["adamw (foreach)"][1])
    machine = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    rows = [{
        "optimizer": name,
        "median_step_ms": 1e3 * statistics.median(times),
        "min_step_ms": 1e3 * min(times),
        "ratio_to_adamw_foreach": statistics.median(times) / ref,
        "state_bytes_per_param_byte": state_bytes(opt) / param_bytes,
        "model": args.model, "n_params": n_params, "device": args.device, "machine": machine,
        "torch": torch.__version__, "rounds": args.rounds,
        "date": dt.date.today().isoformat(),
    } for name, (opt, times) in setups.items()]
    df = pd.DataFrame(rows)
    out = Path(args.out or f"results/bench/optimizer_step{'_cuda' if args.device == 'cuda' else ''}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4g")
    print(df[["optimizer", "median_step_ms", "ratio_to_adamw_foreach", "state_bytes_per_param_byte"]]
          .to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
