"""Images/s of train.py's training step against a bare loop, and per optimizer, on synthetic data.

    python scripts/bench_throughput.py                     # CPU: resnet18, 64 px, batch 32
    python scripts/bench_throughput.py --device cuda       # GPU: resnet50, 224 px, batch 256, bf16, channels_last
    python scripts/bench_throughput.py --device cuda --impl fused --compile   # torch.compile'd model
    OMP_NUM_THREADS=1 python scripts/bench_throughput.py --model two_conv_net --num-classes 10 --in-chans 1 \
        --model-kwargs '{"width": 16}' --image-size 28 --batch-size 128 --channels-last yes --other-layout
                                                           # the Fashion-MNIST study's trial, channels_last vs not
    torchrun --nproc_per_node 2 scripts/bench_throughput.py   # DDP (gloo on CPU, NCCL on GPU)

Under torchrun the model is wrapped in DistributedDataParallel exactly as train.py does it, the
batch is global (each rank takes batch / world, the recipe's per-GPU batch), the stop decision
is the collective one of train.py (every trainer.stop_check_every steps), and images/s counts
every rank's images; rank 0 writes the figures.

"harness" is adarem.engine.train_epoch, exactly as train.py calls it (loss watch, scheduler step,
logging, stop checks); "bare" is the minimal loop (forward, loss, zero_grad, backward, step) on
the same model, optimizer and batches; "harness_no_tracker" is the harness without the oscillation
tracker (measured with the bare loop, when the tracker is on), which splits the harness's overhead
into the tracker's share and the rest. Each round runs every candidate once, in another seeded order
every round (the same on every rank); each harness candidate's step count goes on across its passes (as in a run,
so the tracker's record steps fall where they would). The table gives medians, the harness
overhead and each optimizer's images/s relative to SGD.

Real loaders: ``--loaders synthetic,torch,dali`` adds AdaRem's training step fed by each loader
from JPEG files (``--root``, an ImageFolder tree with train/ and val/; default: a generated tree
of crops of real photos at ImageNet-like sizes, one epoch of ``--steps`` batches, at most 2,048
distinct files and hard links to them), decoding, RandomResizedCrop and flip included, with
``--workers`` loader processes (DALI: threads). ``relative_to_synthetic`` is its images/s over
the same step fed from memory: 1.0 means the loader keeps the model busy. Each timed round is one
pass, which starts with empty worker queues (as every epoch of training does): give enough
``--steps`` that this start (about one batch per worker) is small against the pass. Every
candidate but these reads synthetic data. The helpers of each loader are recorded next to its
figures: the torch loader runs ``--workers`` worker processes; DALI runs ``--workers`` decoding
threads and max(1, ``--workers``) Python reader processes (data.num_workers), so the two are not
given equal CPU helpers at equal --workers.

The harness candidates run as users run them through scripts/compare.py: with the oscillation
tracker (``--oscillation-every``, default 10, compare.py's trainer.oscillation_every for every
trial; 0 = off, train.py's default), and on CUDA with TF32 for fp32 matmuls and convolutions
(as adarem/run_setup.py sets it; the bf16 autocast step is unaffected).

Absolute images/s move between processes; ``--repeats N`` runs the whole measurement N times,
each in a fresh process (not under torchrun: there, run the command N times with ``--append``),
writes every run (column ``run``) to --out and the median and range over runs to
``<out>_summary.csv``. Every row records the commit, dirty flag, exact command, CPU model,
threads, torch version and load average before and after (see bench_optimizer.provenance).
Writes results/bench/throughput.csv (or throughput_cuda.csv).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from adarem import distributed as dist_utils
from adarem.config import DataConfig, OptimizerConfig, ScheduleConfig, TrainerConfig
from adarem.data import build_data
from adarem.data.digits import default_cache_dir
from adarem.data.photo_tree import cached_photo_tree
from adarem.engine import TrainState, make_precision, train_epoch
from adarem.models import build_model
from adarem.optim.factory import build_optimizer, optimizer_impl
from adarem.oscillation import OscillationTracker
from adarem.schedule import build_scheduler
from adarem.run.signals import StopFlag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimizer import (bench_command, check_out, default_out, provenance, round_order,  # noqa: E402
                             run_repeats, usable_cpus, write_runs)  # the bench scripts' shared helpers

OPTIMIZERS = {
    "sgd": OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4),
    "adam": OptimizerConfig(name="adam", lr=1e-3),
    "adamw": OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05),
    "adarem": OptimizerConfig(name="adarem", lr=0.1, weight_decay=1e-4),
    "adarem_m": OptimizerConfig(name="adarem", lr=0.01, momentum=0.9, weight_decay=1e-4),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_epoch(model, loader, optimizer, precision, device, channels_last):
    for x, y in loader.epoch(0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


UNIQUE_PHOTOS = 2048  # real JPEG files of a generated tree; its other entries are hard links to them
TREE = dict(size_range=(300, 500), seed=0, quality=90)  # the generated tree's JPEGs


def photo_tree(train_images: int, dist) -> Path:
    """A generated ImageFolder tree of real-photo crops (adarem/data/photo_tree.py) with
    ``train_images`` training entries: at most UNIQUE_PHOTOS distinct JPEG files, the other entries
    hard links to them (the same decoding work per image, as from a warm page cache, without
    generating thousands of files). Made once per size under the cache dir, by the first process
    of each node, in a private folder renamed into place when complete."""
    classes = 8
    per_class = -(-train_images // classes)
    unique = UNIQUE_PHOTOS // classes
    lo, hi = TREE["size_range"]
    # named by every parameter of its files (cached_photo_tree also refuses a tree made with others)
    root = default_cache_dir() / (f"bench_photos_{classes}x{per_class}_u{min(unique, per_class)}_{lo}-{hi}px"
                                  f"_s{TREE['seed']}_q{TREE['quality']}")
    if dist.local_rank == 0:
        cached_photo_tree(root, unique_per_class=unique, classes=classes, train_per_class=per_class,
                          val_per_class=1, **TREE)
    dist_utils.barrier()
    return root


def default_workers() -> int:
    """Loader workers per rank: the CPUs this process may use (affinity, not the host's count),
    shared by the ranks of the node, one left to the training process."""
    per_rank = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_rank - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--model-kwargs", default="{}", help='JSON, as model.kwargs (e.g. \'{"width": 16}\')')
    ap.add_argument("--channels-last", default="auto", choices=["auto", "yes", "no"],
                    help="memory layout of model and batches (trainer.channels_last; auto: yes on CUDA, no on CPU)")
    ap.add_argument("--other-layout", action="store_true",
                    help="add AdaRem's harness step in the other memory layout (column relative_to_other_layout)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help=f"comma-separated subset of {list(OPTIMIZERS)}")
    ap.add_argument("--impl", default="auto", choices=["auto", "foreach", "fused"],
                    help="optimizer.impl for every optimizer (auto: the harness's default, each optimizer's fused "
                         "path where it has one: torch's fused SGD/Adam/AdamW, AdaRem's C++ kernel on the CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (trainer.compile=true)")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare-loop candidate")
    ap.add_argument("--loaders", default="synthetic",
                    help="comma-separated: synthetic (always measured) and the real loaders torch, dali")
    ap.add_argument("--root", default=None, help="ImageFolder tree for the real loaders (default: generated)")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader worker processes (torch) or threads (dali) per rank (default: this rank's share "
                         "of the CPUs it may use, minus one)")
    ap.add_argument("--oscillation-every", type=int, default=10,
                    help="the oscillation tracker of the harness candidates, as trainer.oscillation_every (default "
                         "10: compare.py's setting for every trial; 0: off, train.py's default)")
    ap.add_argument("--repeats", type=int, default=1, help="whole measurements, each in a fresh process")
    ap.add_argument("--append", action="store_true", help="add the runs to --out's runs (same command and commit)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("bench_throughput: --device cuda asked for but no CUDA device is visible")
    if args.repeats < 1 or args.oscillation_every < 0:
        raise SystemExit("bench_throughput: --repeats must be >= 1 and --oscillation-every >= 0")
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--image-size", args.image_size)):
        if value is not None and value < 1:  # 0 was silently taken for the default
            raise SystemExit(f"bench_throughput: {flag}={value} must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise SystemExit(f"bench_throughput: --workers={args.workers} must be >= 0 (0: the default)")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ddp = f"_ddp{os.environ['WORLD_SIZE']}" if under_torchrun else ""
    out = Path(args.out) if args.out else default_out(f"throughput{'_cuda' if gpu else ''}{ddp}.csv")
    command = bench_command("bench_throughput.py")
    if under_torchrun:
        command = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '?')} " + command.removeprefix("python ")
    metrics = ["images_per_s", "relative_to_bare_adarem", "relative_to_sgd", "relative_to_synthetic",
               "relative_to_other_layout"]
    check_out(out, "bench_throughput", "candidate", append=args.append, command=command)
    if args.repeats > 1:
        if under_torchrun:
            raise SystemExit("bench_throughput: --repeats > 1 under torchrun: run the torchrun command once per "
                             "repeat with --append")
        df = run_repeats(Path(__file__).resolve(), sys.argv[1:], args.repeats)
        df = write_runs(df, out, args.append, "candidate", metrics, command)
        _print_summary(df)
        return
    load_before = os.getloadavg()
    dist = dist_utils.init_distributed("cuda" if gpu else "cpu")
    device = dist.device
    model_name = args.model or ("resnet50" if gpu else "resnet18")
    size = args.image_size or (224 if gpu else 64)
    batch = args.batch_size or (256 if gpu else 32)
    steps = args.steps or (50 if gpu else 8)
    amp = "bf16" if gpu else "none"
    channels_last = gpu if args.channels_last == "auto" else args.channels_last == "yes"
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except ValueError as exc:
        raise SystemExit(f"bench_throughput: --model-kwargs={args.model_kwargs!r} is not JSON ({exc}); write it as "
                         f"'{{\"width\": 16}}'") from None
    if not isinstance(model_kwargs, dict):
        raise SystemExit(f"bench_throughput: --model-kwargs={args.model_kwargs!r} must be a JSON object")
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as run_setup.py

    args.workers = args.workers or default_workers()
    loaders = [n for n in args.loaders.split(",") if n]
    if "synthetic" not in loaders or not set(loaders) <= {"synthetic", "torch", "dali"}:
        raise SystemExit(f"bench_throughput: --loaders={args.loaders!r} must include synthetic and name only "
                         f"synthetic, torch, dali")
    # the default normalisation is ImageNet's 3 channels; another count needs one value per channel
    channels = {} if args.in_chans == 3 else {"in_chans": args.in_chans, "mean": [0.5] * args.in_chans,
                                              "std": [0.25] * args.in_chans}
    data_cfg = DataConfig(name="synthetic", image_size=size, num_classes=args.num_classes, **channels,
                          synthetic_train_size=steps * batch, synthetic_val_size=batch, num_workers=0)
    data = {"synthetic": build_data(data_cfg, batch, dist.rank, dist.world_size, 0, device).train}
    real = [n for n in loaders if n != "synthetic"]
    if real:
        root = Path(args.root) if args.root else photo_tree(steps * batch, dist)
        for name in real:
            cfg = DataConfig(name="folder", root=str(root), loader=name, image_size=size, num_workers=args.workers,
                             **({"dali_threads": args.workers} if name == "dali" else {}), **channels)
            data[name] = build_data(cfg, batch, dist.rank, dist.world_size, 0, device, channels_last=channels_last).train
            if len(data[name]) < steps:
                raise SystemExit(f"bench_throughput: {root / 'train'} holds {len(data[name])} batches of {batch}, "
                                 f"fewer than --steps={steps}; give a larger tree or fewer steps")
    # max_steps: a real loader's tree may hold more than --steps batches; each round is --steps of them
    tcfg = TrainerConfig(epochs=1000, batch_size=batch, amp=amp, channels_last=channels_last, log_every=20,
                         checkpoint_every_min=0, max_steps=steps)
    precision = make_precision(amp, device)

    names = [n for n in args.optimizers.split(",") if n]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or "adarem" not in names:
        raise SystemExit(f"bench_throughput: --optimizers={args.optimizers!r} must include adarem and "
                         f"name only {list(OPTIMIZERS)}")
    flags = {"impl": args.impl}
    setups, trackers = {}, {}
    # "adarem@<layout>": AdaRem's model, optimizer and tracker again, in the other memory layout
    other = "adarem@" + ("contiguous" if channels_last else "channels_last")
    layouts = {name: channels_last for name in names} | ({other: not channels_last} if args.other_layout else {})
    for name, layout in layouts.items():
        torch.manual_seed(0)
        try:
            model = build_model(model_name, args.num_classes, args.in_chans, kwargs=model_kwargs).to(device)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise SystemExit(f"bench_throughput: --model {model_name} with --num-classes {args.num_classes} "
                             f"--in-chans {args.in_chans} --model-kwargs {args.model_kwargs}: {exc}") from None
        if layout:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(dataclasses.replace(OPTIMIZERS[name.split("@")[0]], **flags), model)
        # as run_setup builds it: on the model before DDP and compile
        trackers[name] = OscillationTracker(model, args.oscillation_every) if args.oscillation_every else None
        sched = build_scheduler(ScheduleConfig(name="cosine"), opt, tcfg.epochs, steps)
        if dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.local_rank] if gpu else None, gradient_as_bucket_view=True)
        setups[name] = (torch.compile(model) if args.compile else model, opt, sched)
    # harness_no_tracker: the harness step without the oscillation tracker, so that the overhead
    # over the bare loop splits into the tracker's share and the rest
    untracked = [] if args.no_bare or not args.oscillation_every else [("harness_no_tracker", "adarem", "synthetic")]
    candidates = [("harness", "adarem", "synthetic")] + ([] if args.no_bare else [("bare", "adarem", "synthetic")]) + \
        untracked + [("harness", n, "synthetic") for n in names if n != "adarem"] + [("harness", "adarem", n) for n in real] + \
        ([("harness", other, "synthetic")] if args.other_layout else [])
    times = {c: [] for c in candidates}
    stop = StopFlag(dist.enabled, device)
    # each candidate's step count goes on across its passes, as a run's does, so that the tracker's
    # windows and record steps fall where they fall in training (a count restarted at 1 every pass
    # of 8 or 12 steps would never, or always at the same place, reach a record step)
    steps_done = {c: 0 for c in candidates}

    def run(kind, name, loader):
        model, opt, sched = setups[name]
        sync(device)
        dist_utils.barrier()
        t0 = time.perf_counter()
        if kind == "bare":
            bare_epoch(model, data[loader], opt, precision, device, channels_last)
        else:
            done = steps_done[(kind, name, loader)]
            state = TrainState(global_step=done)
            outcome = train_epoch(model, data[loader], opt, sched, precision, device,
                                  dataclasses.replace(tcfg, max_steps=done + steps, channels_last=layouts[name]), state,
                                  stop,
                                  lambda rec: None, None if kind == "harness_no_tracker" else trackers[name],
                                  lambda: False)
            steps_done[(kind, name, loader)] += state.batch
            if state.batch != steps:
                raise SystemExit(f"bench_throughput: {kind}:{name} on {loader} ended after {state.batch} of "
                                 f"{steps} steps ({outcome.reason})")
        sync(device)
        dist_utils.barrier()  # the slowest rank sets the pace, as in training
        return time.perf_counter() - t0

    for c in candidates:  # warm-up, one untimed pass each (allocator, cudnn autotune, compilation)
        run(*c)
    for r in range(args.rounds):
        # another order every round, the same on every rank: no candidate always runs right after the same other one
        for c in round_order(candidates, r):
            times[c].append(run(*c))

    if not dist.is_main:
        dist_utils.cleanup()
        return
    images = steps * batch  # over all ranks: each rank trains `steps` batches of batch / world
    ips = {c: images / statistics.median(t) for c, t in times.items()}
    prov = provenance(load_before, command, torch.cuda.get_device_name(device) if gpu else None)

    def helpers(loader: str) -> tuple:
        """(processes, threads) of the loader's helpers, per rank."""
        if loader == "torch":
            return args.workers, 0  # worker processes, each decoding one sample at a time
        if loader == "dali":
            return max(1, args.workers), args.workers  # Python reader processes, DALI decoding threads
        return 0, 0

    rows = []
    synth = "synthetic"
    for (kind, name, loader), v in ips.items():
        on_synth = loader == synth
        procs, threads = helpers(loader)
        rows.append({"candidate": f"{kind}:{name}" + ("" if on_synth else f":{loader}"), "images_per_s": v,
                     "loader": loader, "loader_processes": procs, "loader_threads": threads,
                     "relative_to_bare_adarem": v / ips[("bare", "adarem", synth)]
                     if kind.startswith("harness") and name == "adarem" and on_synth and ("bare", "adarem", synth) in ips
                     else math.nan,
                     "relative_to_sgd": v / ips[("harness", "sgd", synth)]
                     if kind == "harness" and on_synth and "@" not in name and ("harness", "sgd", synth) in ips
                     else math.nan,
                     "relative_to_other_layout": v / ips[("harness", other, synth)]
                     if (kind, name, loader) == ("harness", "adarem", synth) and ("harness", other, synth) in ips
                     else math.nan,
                     "relative_to_synthetic": v / ips[("harness", name, synth)] if not on_synth else math.nan,
                     "model": model_name, "image_size": size, "batch_size": batch, "steps": steps,
                     "rounds": args.rounds, "warmup_passes": 1, "amp": amp, "tf32": gpu,
                     "channels_last": layouts[name], "impl": args.impl,
                     "num_classes": args.num_classes, "in_chans": args.in_chans, "model_kwargs": args.model_kwargs,
                     "optimizer_path": optimizer_impl(setups[name][1]), "compile": args.compile,
                     "oscillation_every": args.oscillation_every if kind == "harness" else 0,  # bare, no_tracker: off
                     "photo_tree": "" if on_synth else str(root), "world_size": dist.world_size,
                     "device": args.device, **prov})
    df = pd.DataFrame(rows)
    write_runs(df.assign(run=1), out, args.append, "candidate", metrics, command)
    print(df[["candidate", "images_per_s", "relative_to_sgd", "relative_to_synthetic"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    if ("bare", "adarem", synth) in ips:
        overhead = 1 - ips[("harness", "adarem", synth)] / ips[("bare", "adarem", synth)]
        print(f"harness overhead vs bare loop (adarem): {100 * overhead:.1f} %")
        if ("harness_no_tracker", "adarem", synth) in ips:
            rest = 1 - ips[("harness_no_tracker", "adarem", synth)] / ips[("bare", "adarem", synth)]
            print(f"  of which without the oscillation tracker: {100 * rest:.1f} % (the tracker: the difference)")
    ours, sgd = ips[("harness", "adarem", synth)], ips.get(("harness", "sgd", synth))
    vs_sgd = f", sgd {sgd:.0f} img/s, adarem/sgd = {ours / sgd:.3f}" if sgd else ""
    fed = "".join(f", fed by the {n} loader ({helpers(n)[0]} processes, {helpers(n)[1]} threads) "
                  f"{ips[('harness', 'adarem', n)]:.0f} img/s ({ips[('harness', 'adarem', n)] / ours:.2f} of synthetic)"
                  for n in real)
    layout = "channels_last" if channels_last else "contiguous"
    vs_layout = "" if ("harness", other, synth) not in ips else \
        f", {other.split('@')[1]} {ips[('harness', other, synth)]:.0f} img/s, {layout}/other = " \
        f"{ours / ips[('harness', other, synth)]:.3f}"
    print(f"FIGURE throughput {model_name} {size}px batch {batch} {amp} {layout} impl={args.impl} compile={args.compile} "
          f"oscillation_every={args.oscillation_every}: adarem {ours:.0f} img/s{vs_sgd}{fed}{vs_layout}")
    dist_utils.cleanup()


def _print_summary(df: pd.DataFrame) -> None:
    runs = df["run"].nunique()
    for cand, col in (("harness:adarem", "relative_to_sgd"), ("harness:adarem", "relative_to_bare_adarem"),
                      ("harness_no_tracker:adarem", "relative_to_bare_adarem"),
                      ("harness:adarem:torch", "relative_to_synthetic"), ("harness:adarem:dali", "relative_to_synthetic"),
                      ("harness:adarem", "relative_to_other_layout")):
        v = df.loc[df.candidate == cand, col].dropna()
        if len(v):
            print(f"FIGURE throughput {cand} {col} over {runs} runs: {v.median():.3f} (range {v.min():.3f}-{v.max():.3f})")


if __name__ == "__main__":
    main()
