"""JPEG decoding throughput: torchvision.io.decode_jpeg on the CPU (one thread, and a thread pool)
against the GPU's hardware/nvJPEG decoder (device="cuda", batched).

It is the measurable stand-in for DALI's "mixed" decoder where DALI is not installed (the lent
GPU machine has no DALI). Images are a photo tree of real JPEGs (adarem/data/photo_tree.py:
crops of scikit-learn's two sample photos at ImageNet-like sizes).

    python scripts/bench_decode.py --device cuda        # writes results/bench/jpeg_decode_cuda.csv
    python scripts/bench_decode.py --images 32          # CPU only (dry run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from adarem.data.photo_tree import make_photo_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--images", type=int, default=512, help="JPEGs in the tree (400-600 px wide)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode: --device cuda asked for but no CUDA device is visible")
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, args.images // 4)
        root = make_photo_tree(Path(tmp), classes=4, train_per_class=per_class, val_per_class=1,
                               size_range=(400, 600))
        files = sorted((root / "train").rglob("*.JPEG"))
        data = [read_file(str(f)) for f in files]
    mb = sum(d.numel() for d in data) / 2**20
    threads = os.cpu_count() or 1
    pool = ThreadPoolExecutor(threads)
    batches = [data[i:i + args.batch] for i in range(0, len(data), args.batch)]

    def cpu_one_thread():
        for d in data:
            decode_jpeg(d, mode=ImageReadMode.RGB)

    def cpu_pool():
        list(pool.map(lambda d: decode_jpeg(d, mode=ImageReadMode.RGB), data))

    def gpu_batched():
        for b in batches:
            decode_jpeg(b, mode=ImageReadMode.RGB, device="cuda")
        torch.cuda.synchronize()

    cands = {"cpu 1 thread": cpu_one_thread, f"cpu {threads} threads": cpu_pool}
    if args.device == "cuda":
        cands[f"cuda batched ({args.batch})"] = gpu_batched
        # the decoder's output must match the CPU's up to the IDCT's rounding
        ref = decode_jpeg(data[0], mode=ImageReadMode.RGB).float()
        got = decode_jpeg([data[0]], mode=ImageReadMode.RGB, device="cuda")[0].float().cpu()
        max_diff = float((ref - got).abs().mean())
    else:
        max_diff = None
    for fn in cands.values():
        fn()  # warm-up: decoder handles, thread start
    times = {name: [] for name in cands}
    for _ in range(args.rounds):
        for name, fn in cands.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ips = {name: len(data) / statistics.median(t) for name, t in times.items()}
    base = ips["cpu 1 thread"]
    machine = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = [{"decoder": name, "images_per_s": v, "relative_to_cpu_1_thread": v / base,
             "images": len(data), "megabytes": mb, "mean_abs_diff_vs_cpu": max_diff if "cuda" in name else None,
             "cpu_threads": threads, "machine": machine, "torch": torch.__version__,
             "date": dt.date.today().isoformat()} for name, v in ips.items()]
    df = pd.DataFrame(rows)
    out = Path(args.out or f"results/bench/jpeg_decode{'_cuda' if args.device == 'cuda' else ''}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4g")
    print(df[["decoder", "images_per_s", "relative_to_cpu_1_thread"]].to_string(index=False))
    best = max(ips, key=ips.get)
    print(f"FIGURE jpeg_decode {len(data)} photos ({mb:.1f} MB): " +
          ", ".join(f"{n} {v:.0f} img/s" for n, v in ips.items()) + f"; fastest: {best}"
          + (f"; cuda vs cpu mean |diff| {max_diff:.2f}/255" if max_diff is not None else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
