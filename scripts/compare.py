"""Compare optimizers with one protocol for all, then build the tables, plots and claims verdicts.

    python scripts/compare.py                                   # digits, small_cnn: ~8 min on 2 cores
    python scripts/compare.py experiment=fashion_mnist_small
    python scripts/compare.py search=lr_wd seeds=5 select_seeds=2 data=fashion_mnist

Protocol, identical for every optimizer (AlgoPerf's and DeepOBS's tuning rules as the anchor):
  1. search, on the training split minus a fixed holdout (data.eval_on=holdout; the test split
     never chooses anything): learning rates on a log grid around the optimizer's default lr
     (configs/optimizer/), 10^-lr_span .. 10^+lr_span times it in steps of 10^lr_step (default
     two decades in half-decade steps: 5 points); with search=lr_wd, jointly with weight decay
     (the optimizer's own kind, coupled or decoupled) at 0.1x, 1x, 10x its default (1e-4 where the
     default is 0). Every trial is trained with each of ``select_seeds`` selection seeds
     (1000, 1001, ...), disjoint from the final seeds; its score is the mean holdout error, ties
     broken by the mean holdout loss. A failed, diverged or non-finite trial scores worst.
  2. when the best lr sits on the edge of what was tried, the grid is extended by one step beyond
     that edge, up to ``max_extend`` times; a result still on the edge is flagged in the report.
     Every optimizer gets the same trials before extension; the report states the counts.
  3. the chosen configuration is trained with ``seeds`` final seeds (0, 1, ...) on the full
     training split and scored on the test/val split, evaluated ``evals_per_epoch`` times per epoch
     (evenly spaced in steps: the resolution of steps-to-target); scripts/make_tables.py's report,
     with the selection table, a plot of holdout error against lr and the provenance of the
     comparison, is written to ``out``.

Keys of this script (key=value): optimizers=a,b,c  seeds=N  select_seeds=N  search=lr|lr_wd
lr_span=D  lr_step=D  lr_grid=f1,f2,...  (explicit factors instead of span/step; no extension)
max_extend=N  evals_per_epoch=N (finals; default 4)  workers=N  out=DIR  runs=DIR.  Every other
key=value is a train.py override.
Defaults given to every trial unless overridden: trainer.bn_recalibrate=8 (BN statistics recomputed
before each evaluation), trainer.oscillation_every=10, logging.wandb=disabled.

Outputs: <out>/tables.md (+ CSV/LaTeX/plots, see make_tables.py), <out>/selection.csv (one row per
trial and seed: optimizer, lr, weight_decay, seed, stage, status, score, chosen, holdout_loss,
run_dir). Run directories end in the configuration's hash (adarem/run_identity.py): launched again
with the same arguments, a comparison skips its finished trials and resumes the others, and any
other setting never reuses them. A stage in which nothing finished stops with exit code 2.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULTS = {
    # sgd_plain (no momentum) is plain AdaRem's like-for-like baseline, sgd (momentum) adarem_m's;
    # adarem_horizon and adarem_nodecay are the other two readings of lambda (ablations)
    "optimizers": "sgd,sgd_plain,adam,adamw,adarem,adarem_m,adarem_horizon,adarem_nodecay",
    "seeds": "5",
    "select_seeds": "2",
    "search": "lr",
    "lr_span": "1",
    "lr_step": "0.5",
    "lr_grid": "",
    "max_extend": "3",
    "workers": "2",
    "out": "",
    "runs": "",
    "evals_per_epoch": "4",
}
# digits: 1,408 training images, so the holdout is a quarter of them (352 images, 0.28 points per
# image); the selection runs train on the other 1,056, the finals on all 1,408.
# A loss line every 5 of the 66 steps: "train loss at x % of the steps" is read from those lines.
DIGITS_DEFAULTS = ["data=digits", "trainer.epochs=6", "data.holdout_fraction=0.25", "trainer.log_every=5"]
SELECT_SEED0 = 1000
WD_FACTORS = (0.1, 1.0, 10.0)


def fail(message: str) -> None:
    """Bad input or an empty stage: one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from adarem.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def run_one(overrides: list[str], threads: int) -> dict:
    """Train one configuration in this (worker) process; returns its outcome."""
    import torch

    torch.set_num_threads(threads)
    import train
    from adarem.cli import one_line
    from adarem.run_dir import RunLocked
    from adarem.run_record import read_run_json

    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)
    t0 = time.time()
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            code = train.train(cfg)
    except Exception as exc:  # one failed configuration must not stop the comparison
        return {"run_dir": str(run_dir), "status": "failed", "error": one_line(exc), "seconds": time.time() - t0,
                "locked": isinstance(exc, RunLocked)}
    try:
        record = read_run_json(run_dir) or {}
    except ValueError as exc:
        return {"run_dir": str(run_dir), "status": "failed", "error": str(exc), "seconds": time.time() - t0}
    final = record.get("final") or {}
    return {"run_dir": str(run_dir), "status": record.get("status", f"exit {code}"),
            "err": _num(final.get("val_top1_err")), "loss": _num(final.get("val_loss")),
            "data_identity": record.get("data_identity"), "seconds": time.time() - t0}


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def score(res: dict) -> float:
    """A run's error for selection: anything but a finished run with a finite error is worst."""
    err = res.get("err")
    if res.get("status") != "finished" or not isinstance(err, (int, float)) or not math.isfinite(err):
        return math.inf
    return float(err)


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    own, passthrough = dict(DEFAULTS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in DEFAULTS:
            own[key] = value
        elif arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        elif arg.startswith("-"):
            fail(f"unknown option {arg!r}; compare.py takes key=value arguments (see --help)")
        else:
            passthrough.append(arg)
    try:
        for key in ("seeds", "select_seeds", "workers", "max_extend", "evals_per_epoch"):
            own[key] = int(own[key])
        own["lr_span"], own["lr_step"] = float(own["lr_span"]), float(own["lr_step"])
        own["lr_grid"] = [float(x) for x in own["lr_grid"].split(",") if x]
    except ValueError as exc:
        fail(f"bad compare.py argument ({exc}); seeds, select_seeds, workers and max_extend are integers, "
             f"lr_span/lr_step numbers, lr_grid comma-separated numbers")
    own["optimizers"] = [o for o in own["optimizers"].split(",") if o]
    if own["seeds"] < 1 or own["select_seeds"] < 1 or own["workers"] < 1 or own["max_extend"] < 0 \
            or own["evals_per_epoch"] < 1 or not own["optimizers"]:
        fail("seeds, select_seeds, workers and evals_per_epoch must be >= 1, max_extend >= 0, optimizers non-empty")
    if own["search"] not in ("lr", "lr_wd"):
        fail(f"search={own['search']!r} must be lr or lr_wd")
    bad = [m for m in own["lr_grid"] if not (0 < m < math.inf)]
    if bad:
        fail(f"lr_grid={','.join(map(str, own['lr_grid']))}: every factor must be a finite number > 0 (bad: {bad})")
    if not own["lr_grid"] and not (own["lr_step"] > 0 and own["lr_span"] >= 0):
        fail(f"lr_span={own['lr_span']} must be >= 0 and lr_step={own['lr_step']} > 0")
    return own, passthrough


def lr_factors(own: dict) -> list[float]:
    if own["lr_grid"]:
        return sorted(own["lr_grid"])
    n = int(round(own["lr_span"] / own["lr_step"]))
    return [10 ** (k * own["lr_step"]) for k in range(-n, n + 1)]


class Search:
    """The trials of one optimizer: scores per (lr, wd), the chosen point, whether it is interior."""

    def __init__(self, opt: str, lr0: float, wds: list[float], factors: list[float], step: float):
        self.opt, self.lr0, self.wds, self.step = opt, lr0, wds, step
        self.lrs = [lr0 * f for f in factors]
        self.results: dict[tuple[float, float, int], dict] = {}
        self.extensions = 0

    def trials(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.wds]

    def point_score(self, lr: float, wd: float, seeds: list[int]) -> tuple[float, float]:
        """(mean holdout error, mean holdout loss) over the selection seeds; worst if any failed."""
        res = [self.results.get((lr, wd, s), {}) for s in seeds]
        errs = [score(r) for r in res]
        if any(math.isinf(e) for e in errs):
            return math.inf, math.inf
        losses = [r.get("loss", math.nan) for r in res]
        return sum(errs) / len(errs), (sum(losses) / len(losses) if all(map(math.isfinite, losses)) else math.inf)

    def best(self, seeds: list[int]) -> tuple[float, float, float, float]:
        scored = [(*self.point_score(lr, wd, seeds), lr, wd) for lr, wd in self.trials()]
        err, loss, lr, wd = min(scored, key=lambda t: (t[0], t[1]))
        return lr, wd, err, loss

    def edge(self, lr: float) -> str:
        if len(self.lrs) < 3:
            return "not searched (fewer than 3 lrs)"
        return "low" if lr == min(self.lrs) else "high" if lr == max(self.lrs) else ""

    def extend(self, side: str) -> float:
        lr = min(self.lrs) / 10 ** self.step if side == "low" else max(self.lrs) * 10 ** self.step
        self.lrs.append(lr)
        self.lrs.sort()
        self.extensions += 1
        return lr


def main(argv: list[str]) -> int:
    own, base = parse(argv)
    if not any(a.startswith(("data=", "experiment=")) for a in base):
        base = [*DIGITS_DEFAULTS, *base]  # the digits defaults stay under other overrides
    # BN statistics recomputed before every evaluation (8 training batches): evaluated with the
    # lagging running averages, an early curve measures the averages rather than the weights
    for key, value in (("logging.wandb", "disabled"), ("logging.progress", "none"), ("trainer.oscillation_every", "10"),
                       ("trainer.bn_recalibrate", "8")):
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
    factors = lr_factors(own)
    searches: dict[str, Search] = {}
    for opt in own["optimizers"]:
        try:
            ocfg = compose([*base, f"optimizer={opt}"]).optimizer
        except Exception as exc:  # noqa: BLE001
            fail(f"optimizer {opt!r}: {str(exc).strip().splitlines()[0]}")
        w0 = float(ocfg.weight_decay)
        wds = [w0] if own["search"] == "lr" else [(w0 or 1e-4) * f for f in WD_FACTORS]
        searches[opt] = Search(opt, float(ocfg.lr), wds, factors, own["lr_step"])
    select_seeds = [SELECT_SEED0 + i for i in range(own["select_seeds"])]
    final_seeds = list(range(own["seeds"]))

    # the finals' validation curve: evaluations at evenly spaced steps, for steps-to-target. The
    # selection runs evaluate at epoch ends only: evaluating does not change training (tested).
    evals = [] if any(a.startswith("trainer.evals_per_epoch=") for a in base) else \
        [f"trainer.evals_per_epoch={own['evals_per_epoch']}"]

    def overrides(opt, lr, wd, seed, stage, eval_on):
        return [*base, *(evals if stage == "final" else []), f"optimizer={opt}", f"optimizer.lr={lr:.6g}", f"optimizer.weight_decay={wd:.6g}",
                f"seed={seed}", f"data.eval_on={eval_on}",
                # ${run_id:} is the hash of the whole configuration: another setting, another dir
                f"run_dir={runs_root / stage / opt / f'lr{lr:.6g}_wd{wd:.6g}_s{seed}'}_${{run_id:}}"]

    n_trials = len(factors) * len(next(iter(searches.values())).wds)
    print(f"compare: {len(searches)} optimizers x {n_trials} trials x {len(select_seeds)} selection seeds on a "
          f"holdout (search={own['search']}), then {len(final_seeds)} final seeds each; {own['workers']} workers "
          f"x {threads} threads; runs in {runs_root}")
    rows, data_identity = [], None
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=own["workers"], mp_context=ctx) as pool:

        def run_trials(todo: list[tuple[str, float, float, int]]) -> None:
            jobs = {t: pool.submit(run_one, overrides(t[0], t[1], t[2], t[3], "select", "holdout"), threads)
                    for t in todo}
            for (opt, lr, wd, seed), fut in jobs.items():
                res = fut.result()
                if res.get("locked"):  # not evaluated: never score it as worst
                    fail(f"{res['run_dir']} is in use by another process (another compare on the same runs=?); "
                         f"wait for it to end, then launch again: finished trials are kept")
                searches[opt].results[(lr, wd, seed)] = res
                print(f"  select {opt:15s} lr {lr:<9.4g} wd {wd:<8.3g} seed {seed} {res['status']:9s} "
                      f"holdout top-1 err {score(res):6.2f}%  ({res['seconds']:.0f} s)"
                      + (f"  {res['error']}" if "error" in res else ""))

        run_trials([(opt, lr, wd, s) for opt, srch in searches.items() for lr, wd in srch.trials() for s in select_seeds])
        for _ in range(own["max_extend"] if not own["lr_grid"] else 0):
            todo = []
            for opt, srch in searches.items():
                lr, wd, err, _ = srch.best(select_seeds)
                side = srch.edge(lr)
                if side in ("low", "high") and math.isfinite(err):
                    new = srch.extend(side)
                    todo += [(opt, new, w, s) for w in srch.wds for s in select_seeds]
            if not todo:
                break
            print(f"  extending the grid of {sorted({t[0] for t in todo})} by one half-decade step")
            run_trials(todo)
        chosen = {opt: srch.best(select_seeds) for opt, srch in searches.items()}
        empty = [opt for opt, (_, _, err, _) in chosen.items() if not math.isfinite(err)]
        if empty:
            fail(f"no learning rate of {', '.join(empty)} finished with a finite holdout error on every selection "
                 f"seed; move or widen the grid (lr_span, lr_grid), and see the run directories under "
                 f"{runs_root / 'select'}")
        finals = {(opt, s): pool.submit(run_one, overrides(opt, chosen[opt][0], chosen[opt][1], s, "final", "val"),
                                        threads)
                  for opt in searches for s in final_seeds}
        finished = set()
        for (opt, s), fut in finals.items():
            res = fut.result()
            if res.get("locked"):
                fail(f"{res['run_dir']} is in use by another process; wait for it to end, then launch again")
            if math.isfinite(score(res)):
                finished.add(opt)
                data_identity = data_identity or res.get("data_identity")
            lr, wd = chosen[opt][:2]
            rows.append(dict(optimizer=opt, lr=lr, weight_decay=wd, seed=s, stage="final", status=res["status"],
                             score=score(res), chosen=True, holdout_loss=math.nan, run_dir=res["run_dir"]))
            print(f"  final  {opt:15s} lr {lr:<9.4g} wd {wd:<8.3g} seed {s} {res['status']:9s} "
                  f"test top-1 err {res.get('err', math.nan):6.2f}%  ({res['seconds']:.0f} s)"
                  + (f"  {res['error']}" if "error" in res else ""))
        if not finished:
            fail(f"no final run finished; see the run directories under {runs_root / 'final'}")

    import pandas as pd

    from adarem.results import load_runs, write_report
    from adarem.results.plots import plot_selection

    for opt, srch in searches.items():
        for (lr, wd, seed), res in sorted(srch.results.items()):
            rows.append(dict(optimizer=opt, lr=lr, weight_decay=wd, seed=seed, stage="select", status=res["status"],
                             score=score(res), chosen=(lr, wd) == chosen[opt][:2], holdout_loss=res.get("loss", math.nan),
                             run_dir=res["run_dir"]))
    out.mkdir(parents=True, exist_ok=True)
    selection = pd.DataFrame(rows).sort_values(["stage", "optimizer", "lr", "weight_decay", "seed"], ascending=[False, True, True, True, True])
    selection.to_csv(out / "selection.csv", index=False, float_format="%.6g")
    plot_selection(selection, out / "plots" / "selection_lr.png")

    # only this invocation's finals: runs left in the tree by another invocation (other epochs, an
    # lr chosen before) must never enter its verdicts
    rs = load_runs(runs_root / "final").subset(r["run_dir"] for r in rows if r["stage"] == "final")
    command = "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)
    preamble = provenance(command, own, threads, data_identity, len(select_seeds), final_seeds) + "\n" + \
        selection_table(searches, chosen, select_seeds, factors) + "\n![holdout error against lr](plots/selection_lr.png)\n"
    text = write_report(rs, out, REPO / "results" / "claims.yaml", command, preamble=preamble)
    verdicts = [line for line in text.splitlines() if line.startswith("| ") and any(
        v in line for v in ("Supported", "Contradicted", "Inconclusive", "Not supported", "Insufficient data"))]
    print("\n".join(verdicts))
    print(f"\nwrote {out}/tables.md (tables, claims, plots) and {out}/selection.csv; runs in {runs_root}")
    return 0


def provenance(command: str, own: dict, threads: int, data_identity, n_select: int, final_seeds: list[int]) -> str:
    import torch

    from adarem.run_record import git_info, versions

    git = git_info()
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (
        "## Provenance\n\n"
        f"- command: `{command}`\n"
        f"- commit: `{git['commit']}`{' (with uncommitted changes)' if git['dirty'] else ''}\n"
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs\n"
        f"- threads: {own['workers']} worker processes x {threads} torch threads each "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); torch {torch.__version__}\n"
        f"- versions: {vers}\n"
        f"- data: {data_identity}\n"
        f"- protocol: search={own['search']}, {n_select} selection seeds ({SELECT_SEED0}..), final seeds "
        f"{final_seeds[0]}..{final_seeds[-1]}; score = mean holdout top-1 error, ties by holdout loss; finals "
        f"evaluated {own['evals_per_epoch']} times per epoch unless trainer.evals_per_epoch was given\n"
    )


def selection_table(searches: dict, chosen: dict, select_seeds: list[int], factors: list[float]) -> str:
    lines = ["## Hyperparameter selection (holdout of the training split; selection.csv has every trial)\n",
             f"Grid before extension: the default lr times {', '.join(f'{f:.3g}' for f in factors)}"
             f" ({len(factors)} lrs); every optimizer got the same trials before extension.\n",
             "| optimizer | default lr | lrs tried | weight decays | trials (x seeds) | chosen lr | chosen wd "
             "| holdout err (%) | holdout loss | on the edge? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for opt, srch in searches.items():
        lr, wd, err, loss = chosen[opt]
        edge = srch.edge(lr)
        flag = f"**yes ({edge})**" if edge in ("low", "high") else f"**{edge}**" if edge else "no"
        lines.append(f"| {opt} | {srch.lr0:g} | {', '.join(f'{x:.3g}' for x in srch.lrs)} | "
                     f"{', '.join(f'{w:g}' for w in srch.wds)} | {len(srch.trials())} (x{len(select_seeds)})"
                     f"{f', +{srch.extensions} extension(s)' if srch.extensions else ''} | {lr:.3g} | {wd:g} | "
                     f"{err:.2f} | {loss:.4f} | {flag} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from concurrent.futures.process import BrokenProcessPool

    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenProcessPool:
        fail("a worker process died (killed, or out of memory); launch the same command again: finished "
             "trials are kept and unfinished ones resume")
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); launch the same command again to resume", file=sys.stderr)
        sys.exit(130)
