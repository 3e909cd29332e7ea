"""JPEG decoding throughput: torchvision.io.decode_jpeg on the CPU (one thread, and a thread pool)
against the GPU's hardware/nvJPEG decoder (device="cuda", batched).

It is the measurable stand-in for DALI's "mixed" decoder where DALI is not installed (the lent
GPU machine has no DALI). Images are a photo tree of real JPEGs (adarem/data/photo_tree.py:
crops of scikit-learn's two sample photos at ImageNet-like sizes).

    python scripts/bench_decode.py --device cuda        # writes results/bench/jpeg_decode_cuda.csv
    python scripts/bench_decode.py --images 32          # CPU only (dry run)

With --device cuda it is also a check: every image the GPU decodes (the batched call that is
timed) must have the CPU decoder's shape and a mean absolute difference from the CPU's pixels
below --max-mean-abs-diff (default 2.0 of 255, torchvision's own tolerance between its CPU and
nvJPEG decoders, test_decode_jpeg_cuda); the worst image's mean, the mean over all pixels and the
largest single-pixel difference are written. Beyond the tolerance the command writes its CSV,
prints FAILED with the figures and exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from adarem.data.photo_tree import make_photo_tree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimizer import (bench_command, check_out, default_out, provenance, round_order,  # noqa: E402
                             usable_cpus, write_csv_files)  # the bench scripts' shared helpers

SIZE_RANGE, SEED, QUALITY = (400, 600), 0, 90  # the tree's JPEGs: widths in pixels, generator seed, quality


def decode_difference(cpu: list, gpu: list) -> dict:
    """How far the GPU's decoded images are from the CPU's (uint8 CxHxW tensors, in the same
    order): per image the mean |difference| in levels of 255; the worst image's, the mean over
    every pixel, the largest single difference, and the images whose shapes differ."""
    shapes = [i for i, (a, b) in enumerate(zip(cpu, gpu)) if a.shape != b.shape]
    if len(cpu) != len(gpu):
        shapes.append(f"{len(cpu)} CPU images vs {len(gpu)} GPU images")
    per_image, total, pixels, largest = [], 0.0, 0, 0.0
    for i, (a, b) in enumerate(zip(cpu, gpu)):
        if i in shapes:
            continue
        d = (a.float() - b.float().cpu()).abs()
        per_image.append(float(d.mean()))
        total += float(d.sum())
        pixels += d.numel()
        largest = max(largest, float(d.max()))
    return {"worst_image_mean_abs_diff": max(per_image, default=float("nan")),
            "mean_abs_diff": total / pixels if pixels else float("nan"), "max_abs_diff": largest,
            "shape_mismatches": shapes}


def decode_problems(diff: dict, tolerance: float) -> list[str]:
    """The check: no shape mismatch, every image's mean |difference| below ``tolerance``."""
    problems = []
    if diff["shape_mismatches"]:
        problems.append(f"decoded shapes differ from the CPU's: {diff['shape_mismatches'][:5]}")
    worst = diff["worst_image_mean_abs_diff"]
    if not worst < tolerance:  # NaN (nothing compared) fails too
        problems.append(f"worst image's mean |GPU - CPU| {worst:.3f}/255 is not below the tolerance {tolerance}/255")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--images", type=int, default=512, help="JPEGs in the tree (400-600 px wide)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-mean-abs-diff", type=float, default=2.0,
                    help="tolerance (levels of 255) for each GPU-decoded image's mean |difference| from the CPU's")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode: --device cuda asked for but no CUDA device is visible")
    for flag, value in (("--rounds", args.rounds), ("--images", args.images), ("--batch", args.batch)):
        if value < 1:
            raise SystemExit(f"bench_decode: {flag}={value} must be >= 1")
    out = Path(args.out) if args.out else default_out(f"jpeg_decode{'_cuda' if args.device == 'cuda' else ''}.csv")
    check_out(out, "bench_decode", "decoder", summary=False)
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, args.images // 4)
        root = make_photo_tree(Path(tmp), classes=4, train_per_class=per_class, val_per_class=1,
                               size_range=SIZE_RANGE, seed=SEED, quality=QUALITY)
        files = sorted((root / "train").rglob("*.JPEG"))
        data = [read_file(str(f)) for f in files]
    mb = sum(d.numel() for d in data) / 2**20
    threads = usable_cpus()  # the pool a loader would use: the CPUs this process may run on
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
        # the check: the timed (batched) GPU decode of every image against the CPU's
        ref = [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        got = [img.cpu() for b in batches for img in decode_jpeg(b, mode=ImageReadMode.RGB, device="cuda")]
        diff = decode_difference(ref, got)
        problems = decode_problems(diff, args.max_mean_abs_diff)
        del ref, got
    else:
        diff, problems = None, []
    for fn in cands.values():
        fn()  # warm-up: decoder handles, thread start
    times = {name: [] for name in cands}
    for r in range(args.rounds):
        for name in round_order(list(cands), r):
            fn = cands[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ips = {name: len(data) / statistics.median(t) for name, t in times.items()}
    base, pooled = ips["cpu 1 thread"], ips[f"cpu {threads} threads"]
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    prov = provenance(load_before, bench_command("bench_decode.py"), gpu)
    checked = lambda name, key: diff[key] if diff is not None and "cuda" in name else None  # noqa: E731
    rows = [{"decoder": name, "images_per_s": v, "relative_to_cpu_1_thread": v / base,
             "relative_to_cpu_pool": v / pooled,  # the CPU alternative a loader would run
             "images": len(data), "megabytes": mb, "batch": args.batch, "rounds": args.rounds,
             "size_range": f"{SIZE_RANGE[0]}-{SIZE_RANGE[1]}", "tree_seed": SEED, "jpeg_quality": QUALITY,
             "worst_image_mean_abs_diff_vs_cpu": checked(name, "worst_image_mean_abs_diff"),
             "mean_abs_diff_vs_cpu": checked(name, "mean_abs_diff"),
             "max_abs_diff_vs_cpu": checked(name, "max_abs_diff"),
             "diff_tolerance": args.max_mean_abs_diff if "cuda" in name else None,
             "decode_check": ("FAILED" if problems else "passed") if "cuda" in name else None,
             "pool_threads": threads, **prov} for name, v in ips.items()]
    df = pd.DataFrame(rows)
    write_csv_files({out: df})
    print(df[["decoder", "images_per_s", "relative_to_cpu_1_thread", "relative_to_cpu_pool"]].to_string(index=False))
    best = max(ips, key=ips.get)
    print(f"FIGURE jpeg_decode {len(data)} photos ({mb:.1f} MB): " +
          ", ".join(f"{n} {v:.0f} img/s" for n, v in ips.items()) + f"; fastest: {best}"
          + (f"; cuda vs cpu: worst image mean |diff| {diff['worst_image_mean_abs_diff']:.2f}/255 (tolerance "
             f"{args.max_mean_abs_diff}), all pixels {diff['mean_abs_diff']:.2f}, largest {diff['max_abs_diff']:.0f}"
             if diff is not None else ""))
    print(f"wrote {out}")
    if problems:
        raise SystemExit("bench_decode: FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main()
