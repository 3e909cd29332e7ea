"""Images/s of the torch DataLoader against DALI on the same tree of ImageNet-sized real JPEGs.

    python scripts/bench_data.py                      # CPU: torch (N workers) vs DALI CPU-only (N threads)
    python scripts/bench_data.py --dali-device mixed  # on a GPU machine: DALI decodes on the GPU

The tree (default: generated under the cache dir) holds crops of scikit-learn's two real photos
at ImageNet-like sizes (about 500x375). Both loaders read the same files with the same batch
size and the same train transform (RandomResizedCrop 224 + flip + normalise) or the validation
transform (Resize 256 + CenterCrop 224). Candidates alternate by round; medians are reported.
Writes results/bench/data.csv. To measure your own data: --root /path/to/imagenet (train/ and val/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adarem.config import DataConfig  # noqa: E402
from adarem.data import build_data  # noqa: E402
from adarem.data.digits import default_cache_dir  # noqa: E402
from adarem.data.photo_tree import make_photo_tree  # noqa: E402


def throughput(loader, max_batches: int, device) -> float:
    """images/s over the first ``max_batches`` batches of an epoch, start-up included (worker
    spawn for torch, pipeline build for DALI: both are paid every epoch), so that prefetching
    cannot hide work outside the timed window."""
    n, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader.epoch(0)):
        n += y.shape[0]
        if i + 1 >= max_batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="ImageFolder tree (default: a generated photo tree)")
    ap.add_argument("--images", type=int, default=1024, help="train (and val) images of the generated tree")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="torch workers = DALI threads")
    ap.add_argument("--batches", type=int, default=16, help="batches timed per round (at most one epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dali-device", default="cpu", choices=["cpu", "mixed"])
    ap.add_argument("--out", default="results/bench/data.csv")
    args = ap.parse_args()
    if args.root:
        root = Path(args.root)
    else:
        per_class = max(1, args.images // 8)
        root = default_cache_dir() / f"bench_photos_{per_class}"
        if not (root / "val").is_dir():
            make_photo_tree(root, classes=8, train_per_class=per_class, val_per_class=per_class,
                            size_range=(400, 600))
    device = torch.device("cuda", 0) if args.dali_device == "mixed" else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_data: --dali-device mixed needs a CUDA device")
    common = dict(name="folder", root=str(root), image_size=224, val_resize=256, num_workers=args.workers,
                  dali_threads=args.workers)
    loaders = {}
    for backend in ("torch", "dali"):
        data = build_data(DataConfig(loader=backend, **common), args.batch_size, 0, 1, 0,
                          device if backend == "dali" else torch.device("cpu"))
        loaders[(backend, "train")] = data.train
        loaders[(backend, "val")] = data.val
    results = {k: [] for k in loaders}
    for k, loader in loaders.items():  # warm-up (page cache, allocator)
        throughput(loader, 2, device)
    for _ in range(args.rounds):
        for k, loader in loaders.items():
            results[k].append(throughput(loader, args.batches, device))
    machine = f"{platform.machine()} {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    rows = []
    for (backend, split), v in results.items():
        med = statistics.median(v)
        rows.append({"loader": backend if backend == "torch" else f"dali-{args.dali_device}", "transform": split,
                     "timed_batches": min(args.batches, len(loaders[(backend, split)])),
                     "images_per_s": med, "ratio_to_torch": med / statistics.median(results[("torch", split)]),
                     "workers_or_threads": args.workers, "batch_size": args.batch_size, "root": str(root),
                     "machine": machine, "date": dt.date.today().isoformat()})
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.4g")
    print(df[["loader", "transform", "images_per_s", "ratio_to_torch"]].to_markdown(index=False, floatfmt=".2f"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
