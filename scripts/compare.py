"""Compare optimizers with a fair protocol, then build the tables, plots and claims verdicts.

    python scripts/compare.py                                   # digits, small_cnn: ~4 min on 2 cores
    python scripts/compare.py experiment=fashion_mnist_small seeds=3

Protocol, identical for every optimizer:
  1. learning-rate selection: the optimizer's default lr (its config in configs/optimizer/)
     times each factor of ``lr_grid``, seed 0, trained on the training split minus a fixed
     holdout and evaluated on that holdout (data.eval_on=holdout): the test split is never
     used to choose;
  2. the lr with the lowest final holdout error is re-run with ``seeds`` seeds on the full
     training split and evaluated on the test/val split;
  3. scripts/make_tables.py's report is written to ``out``.

Keys of this script: optimizers=a,b,c  seeds=N  lr_grid=x,y,z  workers=N  out=DIR  runs=DIR.
Every other key=value is a train.py override (data=..., model=..., trainer.epochs=...).
Run directories end in the configuration's hash (adarem/run_identity.py), so an interrupted
comparison, launched again with the same arguments, resumes its unfinished runs and skips the
finished ones, and a comparison with any other setting never reuses them. A run that failed,
diverged or has no finite error counts as the worst point of the grid; a stage in which no run
finished stops the comparison with exit code 2.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULTS = {
    "optimizers": "sgd,adam,adamw,adarem,adarem_m",
    "seeds": "3",
    "lr_grid": "0.3,1,3",
    "workers": "2",
    "out": "",
    "runs": "",
}
DIGITS_DEFAULTS = ["data=digits", "trainer.epochs=6", "trainer.oscillation_every=5"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import train  # noqa: F401  (registers the config schema)

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def fail(message: str) -> None:
    """Bad input or an empty stage: one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def score(res: dict) -> float:
    """A run's error for selection: anything but a finished run with a finite error is worst."""
    err = res.get("err")
    if res.get("status") != "finished" or not isinstance(err, (int, float)) or not math.isfinite(err):
        return math.inf
    return float(err)


def run_one(overrides: list[str], threads: int) -> dict:
    """Train one configuration in this (worker) process; returns its outcome."""
    import torch

    torch.set_num_threads(threads)
    import train
    from adarem.run_record import read_run_json

    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)
    t0 = time.time()
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            code = train.train(cfg)
    except Exception as exc:  # one failed configuration must not stop the comparison
        return {"run_dir": str(run_dir), "status": "failed", "error": train.one_line(exc), "seconds": time.time() - t0}
    try:
        record = read_run_json(run_dir) or {}
    except ValueError as exc:
        return {"run_dir": str(run_dir), "status": "failed", "error": str(exc), "seconds": time.time() - t0}
    err = (record.get("final") or {}).get("val_top1_err")
    return {"run_dir": str(run_dir), "status": record.get("status", f"exit {code}"),
            "err": math.nan if err is None else err, "seconds": time.time() - t0}


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    own, passthrough = dict(DEFAULTS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in DEFAULTS:
            own[key] = value
        elif arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            passthrough.append(arg)
    try:
        own["seeds"] = int(own["seeds"])
        own["workers"] = int(own["workers"])
        own["lr_grid"] = [float(x) for x in own["lr_grid"].split(",")]
    except ValueError as exc:
        fail(f"bad compare.py argument ({exc}); seeds and workers are integers, lr_grid is comma-separated numbers")
    own["optimizers"] = [o for o in own["optimizers"].split(",") if o]
    if own["seeds"] < 1 or own["workers"] < 1 or not own["lr_grid"] or not own["optimizers"]:
        fail("seeds and workers must be >= 1, lr_grid and optimizers non-empty")
    bad = [m for m in own["lr_grid"] if not (0 < m < math.inf)]
    if bad:
        fail(f"lr_grid={','.join(map(str, own['lr_grid']))}: every factor must be a finite number > 0 (bad: {bad})")
    return own, passthrough


def main(argv: list[str]) -> int:
    own, base = parse(argv)
    if not base:
        base = list(DIGITS_DEFAULTS)
    for key, value in (("logging.wandb", "disabled"), ("logging.progress", "none"), ("trainer.oscillation_every", "10")):
        if not any(a.startswith(key + "=") for a in base):
            base.append(f"{key}={value}")
    try:
        probe = compose(base)  # fails here, with one line, on a bad override
    except Exception as exc:  # noqa: BLE001 - Hydra's errors carry several lines; keep the first
        fail(f"bad override in {' '.join(base)}: {str(exc).strip().splitlines()[0]}")
    name = probe.experiment_name or f"{probe.data.name}_{probe.model.name}"
    runs_root = Path(own["runs"] or REPO / "runs" / "compare" / name)
    out = Path(own["out"] or REPO / "results" / name)
    threads = max(1, (os.cpu_count() or 1) // own["workers"])
    default_lr = {}
    for opt in own["optimizers"]:
        try:
            default_lr[opt] = float(compose([*base, f"optimizer={opt}"]).optimizer.lr)
        except Exception as exc:  # noqa: BLE001
            fail(f"optimizer {opt!r}: {str(exc).strip().splitlines()[0]}")

    def overrides(opt, lr, seed, stage, eval_on):
        return [*base, f"optimizer={opt}", f"optimizer.lr={lr:.6g}", f"seed={seed}", f"data.eval_on={eval_on}",
                # ${run_id:} is the hash of the whole configuration: another setting, another dir
                f"run_dir={runs_root / stage / opt / f'lr{lr:.6g}_s{seed}'}_${{run_id:}}"]

    print(f"compare: {len(own['optimizers'])} optimizers x {len(own['lr_grid'])} lrs (selection on a holdout), "
          f"then {own['seeds']} seeds each; {own['workers']} workers x {threads} threads; runs in {runs_root}")
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=own["workers"], mp_context=ctx) as pool:
        jobs = {(opt, m): pool.submit(run_one, overrides(opt, default_lr[opt] * m, 0, "select", "holdout"), threads)
                for opt in own["optimizers"] for m in own["lr_grid"]}
        best = {}
        for (opt, m), fut in jobs.items():
            res = fut.result()
            lr = default_lr[opt] * m
            err = score(res)
            print(f"  select {opt:15s} lr {lr:<9.4g} {res['status']:9s} holdout top-1 err {err:6.2f}%  ({res['seconds']:.0f} s)"
                  + (f"  {res['error']}" if "error" in res else ""))
            if opt not in best or err < best[opt][1]:
                best[opt] = (lr, err)
        empty = [opt for opt, (_, err) in best.items() if not math.isfinite(err)]
        if empty:
            fail(f"no learning rate of {', '.join(empty)} finished with a finite holdout error (grid "
                 f"{own['lr_grid']}); widen or move lr_grid, and see the run directories under {runs_root / 'select'}")
        finals = {(opt, s): pool.submit(run_one, overrides(opt, best[opt][0], s, "final", "val"), threads)
                  for opt in own["optimizers"] for s in range(own["seeds"])}
        finished = set()
        for (opt, s), fut in finals.items():
            res = fut.result()
            if math.isfinite(score(res)):
                finished.add(opt)
            print(f"  final  {opt:15s} lr {best[opt][0]:<9.4g} seed {s} {res['status']:9s} "
                  f"test top-1 err {res.get('err', math.nan):6.2f}%  ({res['seconds']:.0f} s)"
                  + (f"  {res['error']}" if "error" in res else ""))
        if not finished:
            fail(f"no final run finished; see the run directories under {runs_root / 'final'}")

    from adarem.results import load_runs, write_report

    rs = load_runs(runs_root / "final")
    command = "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)
    text = write_report(rs, out, REPO / "results" / "claims.yaml", command)
    selection = "\n".join(f"| {opt} | {default_lr[opt]:g} | {', '.join(f'{default_lr[opt] * m:g}' for m in own['lr_grid'])} "
                          f"| {best[opt][0]:g} | {best[opt][1]:.2f} |" for opt in own["optimizers"])
    header = ("## Learning-rate selection (seed 0, holdout of the training split)\n\n"
              "| optimizer | default lr | grid | selected lr | holdout top-1 err (%) |\n|---|---|---|---|---|\n"
              f"{selection}\n\n")
    (out / "tables.md").write_text(text.replace("## ", header + "## ", 1))
    verdicts = [line for line in text.splitlines()
                if line.startswith("| ") and ("upported" in line or "Insufficient data" in line)]
    print("\n".join(verdicts))
    print(f"\nwrote {out}/tables.md (tables, claims, plots); runs in {runs_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
