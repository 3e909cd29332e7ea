"""Files/s of the data loaders, each against its previous version, on one tree of real JPEGs.

    python scripts/bench_data.py                      # CPU: torch (N workers) vs DALI CPU-only (N threads)
    python scripts/bench_data.py --dali-device mixed  # on a GPU machine: DALI decodes on the GPU

Candidates, measured in the same process, each round in another seeded order (medians reported;
a ratio to the previous version is the median of the per-round ratios, with their range):

* ``torch``: the current torch loader (uint8 batches from persistent workers) plus its
  ``to_device`` (float conversion and normalisation, here on the measuring device);
* ``torch@REV``: the torch loader of commit REV (``--previous``): float32 normalised in the
  workers, a new DataLoader and new workers every epoch;
* ``dali-<device>``: the current DALI loader (files read by DALI's Python workers, pipeline
  built once);
* ``dali-<device>@REV``: the DALI loader of commit REV: files read serially in the training
  thread by a batch external source, pipeline built every epoch.

Stage ``load`` times the whole loader; stage ``read`` times the DALI reader alone (no decoding):
the previous batch source iterated in the training thread, or the current parallel source in a
pipeline of its own.

The previous versions are loaded from git (``git show REV:adarem/data/...``) as they were, so
``--previous`` must name a commit of this repository. Each timed round is one whole epoch (or
``--batches`` batches), start-up included (the previous versions pay worker or pipeline start-up
every epoch; the current ones once, in the untimed warm-up round), and the ``*_steady`` columns
time the same epoch from the end of its first batch on: over the default 16 batches the start-up
weighs far more than over a real epoch of thousands, so read throughput off the steady columns,
the start-up's share off the difference. The steady window counts the batches the helpers made
while the first one was awaited: alike for both torch versions (same workers, same prefetch depth),
not for DALI, whose current reader processes read ahead during that wait while the previous
version read in the training thread: the steady DALI ratios (the reader's most) lean towards the
current version, by an amount not measured. Both windows end before the loop lets go of the
epoch (a previous version's teardown is not timed). ``main_thread_cpu_ms_per_file``
is the CPU time of the thread that iterates the loader (the training thread) per file: work the
training thread does instead of launching kernels.

The tree (default: generated under the cache dir) holds crops of scikit-learn's two real photos
at ImageNet-like sizes (about 500x375). Every candidate reads the same files with the same batch
size and the train transform (RandomResizedCrop 224 + flip + normalise) or the validation
transform (Resize 256 + CenterCrop 224). Writes results/bench/data.csv. To measure your own
data: --root /path/to/imagenet (train/ and val/).

``ratio_to_torch`` compares loaders that are not given the same helpers: at ``--workers N`` the
torch loader runs N worker processes, DALI N decoding threads plus N Python reader processes
(the CSV's ``helper_processes`` and ``helper_threads``). Every row records the commit, dirty
flag, exact command, CPU model, threads, torch and DALI versions and the load average before and
after (bench_optimizer.provenance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from functools import partial
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent

from adarem.config import DataConfig
from adarem.data import build_data, list_image_folder, sampling
from adarem.data.datasets import ImageFolderDataset
from adarem.data.digits import default_cache_dir
from adarem.data.photo_tree import cached_photo_tree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimizer import (bench_command, check_out, default_out, provenance, round_order,  # noqa: E402
                             usable_cpus, write_csv_files)  # the bench scripts' shared helpers

TREE = dict(size_range=(400, 600), seed=0, quality=90)  # the generated tree's JPEGs

PREVIOUS = "7d5217c73641bcc65b7c550ac7538a73c60226d1"  # the loaders before issue 15's items 5 and 6


def previous_module(rev: str, relpath: str) -> types.ModuleType:
    """A module of this repository as it was at commit ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:{relpath}"], cwd=REPO, capture_output=True, text=True)
    if src.returncode:
        raise SystemExit(f"bench_data: cannot read {relpath} at {rev}: {src.stderr.strip()}")
    name = f"_previous_{relpath.replace('/', '_').removesuffix('.py')}"
    module = types.ModuleType(name)
    module.__file__ = f"{rev[:7]}:{relpath}"
    sys.modules[name] = module
    exec(compile(src.stdout, module.__file__, "exec"), module.__dict__)
    return module


def previous_loaders(rev: str, cfg: DataConfig, batch: int, device: torch.device) -> dict:
    """{(backend, split): loader} of commit ``rev`` for one process (rank 0 of 1), built as that
    commit's build_data built them."""
    root = Path(cfg.root)
    train_samples, _ = list_image_folder(root / "train")
    val_samples, _ = list_image_folder(root / "val")
    out = {}
    loader_mod = previous_module(rev, "adarem/data/loader.py")
    tf_mod = previous_module(rev, "adarem/data/transforms.py")
    train_tf, val_tf = tf_mod.build_transforms(cfg)
    n_train, n_val = len(train_samples), len(val_samples)
    steps = n_train // batch
    val_plan = sampling.val_batches(n_val, batch, 0, 1)
    pin = device.type == "cuda"
    out[("torch", "train")] = loader_mod.TorchLoader(
        ImageFolderDataset(train_samples, train_tf, 0, cfg.on_corrupt, "RGB"),
        partial(sampling.train_batches, n_train, batch, 0, 1, 0), steps, steps * batch, cfg.num_workers, pin)
    out[("torch", "val")] = loader_mod.TorchLoader(
        ImageFolderDataset(val_samples, val_tf, 0, cfg.on_corrupt, "RGB"),
        lambda epoch, start: val_plan[start:], len(val_plan), n_val, cfg.num_workers, pin)
    dali_mod = previous_module(rev, "adarem/data/dali.py")
    train, val = dali_mod.build_dali_loaders(cfg, train_samples, val_samples, batch, 0, 1, 0, device)
    out[("dali", "train")], out[("dali", "val")] = train, val
    return out


def throughput(loader, max_batches: int, device: torch.device) -> tuple[float, float, float, float]:
    """(files/s, training-thread CPU s per file) over the first ``max_batches`` batches of an
    epoch, start-up included, then the same after the first batch (``_rates``). A loader with
    ``to_device`` finishes its batches there (as the engine does), so the torch loader's
    normalisation is counted."""
    finish = getattr(loader, "to_device", None)
    n, t0, c0, first, last = 0, time.perf_counter(), time.thread_time(), None, None
    for i, (x, y) in enumerate(loader.epoch(0)):
        if finish is not None:
            x, y = finish(x, y, device, False)
        if device.type == "cuda" and (i == 0 or i + 1 >= max_batches):
            torch.cuda.synchronize()
        n += y.shape[0]
        if i == 0:
            first = (n, time.perf_counter(), time.thread_time())
        # the end: taken before the loop lets go of the epoch, whose end stops a previous version's
        # workers or pipeline (a per-epoch cost like its start-up, which the current ones do not pay)
        last = (time.perf_counter(), time.thread_time())
        if i + 1 >= max_batches:
            break
    return _rates(n, t0, c0, first, last)


def _rates(n: int, t0: float, c0: float, first: tuple, last: tuple | None = None) -> tuple[float, float, float, float]:
    """Whole (files/s, CPU s per file) from (t0, c0) to ``last`` (now if None), and steady state:
    from the end of the first batch on. The previous versions start workers or a pipeline inside
    every epoch, the current ones once (in the untimed warm-up): over a 16-batch epoch that start-up
    weighs far more than over an ImageNet epoch's 5,000 batches."""
    t1, c1 = last or (time.perf_counter(), time.thread_time())
    n0, tf, cf = first
    steady = (n - n0) / (t1 - tf) if n > n0 else float("nan"), (c1 - cf) / (n - n0) if n > n0 else float("nan")
    return n / (t1 - t0), (c1 - c0) / n, *steady


def read_rate(loader, max_batches: int, previous: bool) -> tuple[float, float]:
    """The DALI reader alone (no decoding): (files/s, training-thread CPU s per file) for the
    first ``max_batches`` batches of epoch 0. Previous: its batch source, which ran in the
    training thread, iterated there. Current: a pipeline of the loader's parallel source alone
    (its Python workers), built once per loader and kept, like the loader's own pipelines."""
    batches = loader.plan(0, 0)[:max_batches]
    n, t0, c0 = sum(len(b) for b in batches), time.perf_counter(), time.thread_time()
    first = None
    if previous:
        for _ in loader._batch_source(batches):
            first = first or (len(batches[0]), time.perf_counter(), time.thread_time())
        last = (time.perf_counter(), time.thread_time())
    else:
        feed = _read_only_feed(loader)
        feed.start(0, batches)
        for _ in batches:
            feed.pipe.run()
            first = first or (len(batches[0]), time.perf_counter(), time.thread_time())
        last = (time.perf_counter(), time.thread_time())  # the end-of-epoch check below is not timed
        try:
            feed.pipe.run()
            raise SystemExit("bench_data: the read-only pipeline gave more batches than planned")
        except StopIteration:
            feed.pipe.reset()
    return _rates(n, t0, c0, first, last)


def _read_only_feed(loader):
    from adarem.data import dali

    if getattr(loader, "_bench_read_feed", None) is None:
        class ReadOnly(dali.DaliLoader):
            def _pipeline(self, reader):
                from nvidia.dali import fn, pipeline_def

                cfg, parallel = self.cfg, self.cfg.num_workers > 0

                @pipeline_def(batch_size=self.max_batch, num_threads=cfg.dali_threads, device_id=None,
                              prefetch_queue_depth=cfg.dali_prefetch, exec_dynamic=True,
                              py_num_workers=max(1, cfg.num_workers),
                              py_start_method="spawn" if torch.cuda.is_initialized() else "fork")
                def pipe():
                    jpegs, record = fn.external_source(source=reader, num_outputs=2, batch=False, parallel=parallel,
                                                       prefetch_queue_depth=cfg.dali_prefetch if parallel else None)
                    return jpegs, record

                p = pipe()
                p.build()
                return p

        clone = ReadOnly.__new__(ReadOnly)
        clone.__dict__.update(loader.__dict__)
        loader._bench_read_feed = dali._Feed(clone)
    return loader._bench_read_feed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="ImageFolder tree (default: a generated photo tree)")
    ap.add_argument("--images", type=int, default=1024, help="train (and val) images of the generated tree")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=usable_cpus(),
                    help="torch workers = DALI threads = DALI's Python reader workers")
    ap.add_argument("--batches", type=int, default=16, help="batches timed per round (at most one epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dali-device", default="cpu", choices=["cpu", "mixed"])
    ap.add_argument("--previous", default=PREVIOUS, help="commit of the previous loaders ('' to skip them)")
    ap.add_argument("--out", default=str(default_out("data.csv")), help="default: results/bench/data.csv of this checkout")
    args = ap.parse_args()
    for flag, value, least in (("--rounds", args.rounds, 1), ("--batches", args.batches, 1),
                               ("--batch-size", args.batch_size, 1), ("--images", args.images, 8),
                               ("--workers", args.workers, 0)):
        if value < least:
            raise SystemExit(f"bench_data: {flag}={value} must be >= {least}")
    check_out(Path(args.out), "bench_data", "stage", summary=False)
    if args.root:
        root = Path(args.root)
    else:
        per_class = max(1, args.images // 8)
        lo, hi = TREE["size_range"]
        # named by every parameter of its files (cached_photo_tree also refuses a tree made with others)
        root = cached_photo_tree(default_cache_dir() / f"bench_data_photos_8x{per_class}_{lo}-{hi}px_s{TREE['seed']}"
                                                       f"_q{TREE['quality']}", classes=8, train_per_class=per_class,
                                 val_per_class=per_class, **TREE)
    device = torch.device("cuda", 0) if args.dali_device == "mixed" else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_data: --dali-device mixed needs a CUDA device")
    common = dict(name="folder", root=str(root), image_size=224, val_resize=256, num_workers=args.workers)
    threads = {"dali_threads": args.workers}  # DALI's setting, refused with the torch loader
    dali_name = f"dali-{args.dali_device}"
    loaders = {}
    for backend in ("torch", "dali"):
        data = build_data(DataConfig(loader=backend, **common, **(threads if backend == "dali" else {})),
                          args.batch_size, 0, 1, 0, device)
        name = "torch" if backend == "torch" else dali_name
        loaders[(name, "train")], loaders[(name, "val")] = data.train, data.val
    if args.previous:
        rev = args.previous[:7]
        # one configuration for both of that commit's loaders (its torch loader reads no data.loader)
        old = previous_loaders(args.previous, DataConfig(loader="dali", **common, **threads), args.batch_size, device)
        for (backend, split), loader in old.items():
            loaders[(f"{'torch' if backend == 'torch' else dali_name}@{rev}", split)] = loader
    # (stage, loader name, split): "load" = the whole loader, "read" = the DALI reader alone
    runs = {("load", name, split): partial(throughput, loader, args.batches, device)
            for (name, split), loader in loaders.items()}
    for (name, split), loader in loaders.items():
        if name.startswith("dali"):
            runs[("read", name, split)] = partial(read_rate, loader, args.batches, "@" in name)
    results = {k: [] for k in runs}
    load_before = os.getloadavg()
    try:
        for k, run in runs.items():  # warm-up (page cache, allocator, kept workers and pipelines)
            run()
        for r in range(args.rounds):
            for k in round_order(list(runs), r):
                results[k].append(runs[k]())
    finally:
        # an error left the kept workers and pipelines running, and the exit then waited for them forever
        for loader in loaders.values():
            close = getattr(loader, "close", None)
            if close is not None:
                close()
    prov = provenance(load_before, bench_command("bench_data.py"),
                      torch.cuda.get_device_name() if device.type == "cuda" else None)
    load = f"{prov['load_avg_1min_before']:.2f} -> {prov['load_avg_1min_after']:.2f}"  # other work on the machine
    rows = []
    median_rate = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    median_steady = {k: statistics.median(r[2] for r in v) for k, v in results.items()}
    for (stage, name, split), v in results.items():
        rate = median_rate[(stage, name, split)]
        prev = [k for k in results if k[0] == stage and k[2] == split and k[1].startswith(name + "@")]
        rows.append({"stage": stage, "loader": name, "transform": split,
                     "timed_batches": min(args.batches, len(loaders[(name, split)])),
                     "files_per_s": rate, "files_per_s_min": min(r[0] for r in v),
                     "files_per_s_max": max(r[0] for r in v),
                     # per round (the two measured a few seconds apart), then the median and range
                     **_paired(v, results[prev[0]] if prev else None),
                     "ratio_to_torch": (rate / median_rate[("load", "torch", split)] if stage == "load"
                                        else float("nan")),
                     "main_thread_cpu_ms_per_file": 1000 * statistics.median(r[1] for r in v),
                     # after each epoch's first batch: without the per-epoch start-up of the previous versions
                     "files_per_s_steady": median_steady[(stage, name, split)],
                     **_paired(v, results[prev[0]] if prev else None, at=2, suffix="_steady"),
                     "ratio_to_torch_steady": (median_steady[(stage, name, split)]
                                               / median_steady[("load", "torch", split)] if stage == "load"
                                               else float("nan")),
                     "main_thread_cpu_ms_per_file_steady": 1000 * statistics.median(r[3] for r in v),
                     "rounds": args.rounds, "batches": args.batches, "workers": args.workers,
                     **_helpers(stage, name, args.workers),
                     "batch_size": args.batch_size, "previous": args.previous, "dali_device": args.dali_device,
                     "root": str(root), "dali": _dali_version(), **prov})
    df = pd.DataFrame(rows)
    write_csv_files({Path(args.out): df})
    cols = ["stage", "loader", "transform", "files_per_s", "ratio_to_previous", "files_per_s_steady",
            "ratio_to_previous_steady", "ratio_to_previous_steady_min", "ratio_to_previous_steady_max",
            "main_thread_cpu_ms_per_file", "main_thread_cpu_ms_per_file_steady"]
    print(df[cols].to_markdown(index=False, floatfmt=".3g"))
    print(f"wrote {args.out} (1-min load average {load})")


def _helpers(stage: str, name: str, workers: int) -> dict:
    """The CPU helpers a candidate runs besides the training thread (what ratio_to_torch compares):
    torch: ``workers`` worker processes (decoding in them); current DALI: ``workers`` decoding
    threads and max(1, ``workers``) Python reader processes; DALI of the previous commit: the
    decoding threads, its reader in the training thread; the read stage decodes nothing."""
    previous, dali = "@" in name, name.startswith("dali")
    processes = 0 if dali and previous else (max(1, workers) if dali else workers)
    threads = workers if dali and stage == "load" else 0
    return {"helper_processes": processes, "helper_threads": threads}


def _paired(new: list, old: list | None, at: int = 0, suffix: str = "") -> dict:
    """The per-round ratios of files/s (item ``at`` of each round's result) to the previous
    version's: median, min and max."""
    ratios = [a[at] / b[at] for a, b in zip(new, old)] if old else [float("nan")]
    return {f"ratio_to_previous{suffix}": statistics.median(ratios), f"ratio_to_previous{suffix}_min": min(ratios),
            f"ratio_to_previous{suffix}_max": max(ratios)}


def _dali_version() -> str:
    try:
        import nvidia.dali

        return nvidia.dali.__version__
    except ImportError:
        return ""


if __name__ == "__main__":
    main()
