"""Aggregate runs over seeds into the test-error, training-speed and oscillation tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adarem.results.records import RunSet, start_order

# The evaluation protocol (evaluations per epoch, BN recalibration batches) is part of a row: a
# curve evaluated 4 times per epoch reaches a target "sooner" than the same curve evaluated once.
PROTOCOL = ["evals_per_epoch", "bn_recalibrate"]
GROUP = ["dataset", "model", "optimizer", "eval_on", "lr", "weight_decay", "epochs", "batch_size", *PROTOCOL,
         "config_id"]
SETTING = ["dataset", "model"]
MIXED = "mixed hardware (see flags)"  # a time cell whose runs were timed on different platforms
MIXED_SETUP = "mixed training setup (see flags)"  # ... with compile on and off, other optimizer paths, the
# oscillation tracker at other intervals (or off), or another of TIMING_SETUP
# What changes a run's seconds and images/s but not its identity (so runs that differ in it pool into
# one row of errors and steps), besides compile, the optimizer path and the tracker: run row column ->
# the config key it comes from
TIMING_SETUP = {"channels_last": "trainer.channels_last", "deterministic": "trainer.deterministic",
                "num_workers": "data.num_workers", "cache_samples": "data.cache_samples"}
MIXED_WINDOW = "mixed windows (see flags)"  # a path efficiency over runs measured over different windows
MIXED_INTERVAL = "mixed intervals (see flags)"  # an oscillation cell over runs recorded at different intervals
DIVERGED_ERROR = 100.0  # a diverged run's error where a number is needed (claims): the worst possible


def mean_std(values, n: int | None = None) -> str:
    """Mean ± std of the values that are numbers; with ``n`` (the runs the cell stands for), a
    cell over fewer of them says how many: "7.40 ± 0.10 (4 of 5)", never the mean of 4 under n=5."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return "—"
    of = f" ({len(v)} of {n})" if n is not None and len(v) < n else ""
    if len(v) == 1:
        return f"{v.iloc[0]:.2f}{of}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}{of}"


def eval_curve_complete(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether its val-error curve has every evaluation (no metrics line lost after a
    crash, no evaluation without a finite error), so that the best error, steps and seconds to a
    target and the AUC can be read off it (records.load_runs' curve_gap says what is missing)."""
    if "curve_gap" not in runs:
        return pd.Series(True, index=runs.index)
    return runs.curve_gap.fillna("") == ""


def lines_complete(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether no metrics.jsonl line was lost (train loss and oscillation lines too)."""
    if "lines_lost" not in runs:
        return pd.Series(True, index=runs.index)
    return runs.lines_lost.fillna(0) == 0


def _candidates(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration on the val/test split: seeds and the latest start, most seeds first, then
    the most recently started."""
    r = runs[runs.eval_on == "val"].assign(started=lambda d: start_order(d.start_time))
    stats = r.groupby(GROUP, dropna=False).agg(n=("seed", "count"), last=("started", "max")).reset_index()
    return stats.sort_values(["n", "last"], ascending=[False, False], kind="stable")


def selected_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and optimizer, the configuration the comparison is about: evaluated on the
    val/test split, the one with the most seeds; of several with as many seeds, the most recently
    started (listed by ``selection_notes``). Never the lower test error: that would select the
    learning rate on the test split."""
    if runs.empty:
        return runs
    best = _candidates(runs).drop_duplicates(subset=SETTING + ["optimizer"], keep="first")
    return runs[runs.config_id.isin(best.config_id)]


def selection_notes(runs: pd.DataFrame) -> list[dict]:
    """One note per setting and optimizer with more than one configuration on the val/test split
    (two searches in one runs folder, runs by hand beside a comparison): which one the tables,
    targets and claims use, and why; a report lists them."""
    if runs.empty:
        return []
    notes = []
    for (dataset, model, opt), g in _candidates(runs).groupby(SETTING + ["optimizer"], dropna=False, sort=True):
        if len(g) < 2:
            continue
        chosen, rest = g.iloc[0], g.iloc[1:]
        tied = (g.n == chosen.n).sum() > 1
        why = "the most recently started of those with the most seeds" if tied else "the one with the most seeds"
        others = "; ".join(f"lr {r.lr:g}, wd {r.weight_decay:g} ({r.n} seeds)" for r in rest.itertuples())
        notes.append({"run_dir": f"{dataset} x {model}: {opt}",
                      "problem": f"{len(g)} configurations" + (f" with {chosen.n} seeds each" if (g.n == chosen.n).all()
                                                              else "") +
                                 f"; tables, targets and claims use {why} (lr {chosen.lr:g}, wd {chosen.weight_decay:g}, "
                                 f"{chosen.n} seeds), not {others}: keep one comparison per runs folder"})
    return notes


HOLDOUT = "holdout"  # data.eval_on of the lr search's selection trials (a part of train/ held out)
# The lowest error over every evaluation of a run on the split it reports: chosen by looking at
# that split (the test split for final runs), so optimistic, and not a result: named as such
MIN_TOP1, MIN_TOP5 = "min top-1 err over evals (test-selected)", "min top-5 err over evals (test-selected)"
MIN_NOTE = (f"Final = the error at the end of training: the result. `{MIN_TOP1}` (and top-5) is the lowest error "
            "over every evaluation, the mid-epoch ones included, i.e. an epoch chosen by looking at the test split: "
            "optimistic, not a result; shown only to say how far the final error is from the curve's low point.")


def final_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs evaluated on the val/test split: what the tables of results, the targets and the
    claims are about (not the lr search's holdout runs)."""
    return runs[runs.eval_on != HOLDOUT] if not runs.empty else runs


def holdout_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The lr search's selection trials (data.eval_on=holdout): evaluated on a part of the
    training set, never on the test split."""
    return runs[runs.eval_on == HOLDOUT] if not runs.empty else runs


def _error_rows(runs: pd.DataFrame, names: tuple[str, str, str, str]) -> pd.DataFrame:
    """Per configuration: runs, diverged, then final top-1, min top-1, final top-5 and min top-5
    error over the finished runs, in columns named ``names``."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for key, g in runs.groupby(GROUP, dropna=False, sort=True):
        ok = g[g.status == "finished"]
        # over the finished runs; a diverged one (no final error) or a curve with holes (no min over
        # evals; flagged) is counted in the cell: "7.26 ± 0.21 (4 of 5)", never a mean of 4 under n=5
        rows.append({**dict(zip(GROUP, key)), "n": len(g), "diverged": int((g.status == "diverged").sum()),
                     **dict(zip(names, (mean_std(ok[c], len(g))
                                        for c in ("final_top1", "best_top1", "final_top5", "best_top5")))),
                     "_mean": ok.final_top1.mean() if len(ok) else math.nan})
    df = pd.DataFrame(rows).sort_values(["dataset", "model", "eval_on", "_mean"])
    return df.drop(columns=["_mean", "config_id"]).reset_index(drop=True)


def error_table(rs: RunSet) -> pd.DataFrame:
    """Per configuration evaluated on the val/test split: final error (the result) and the
    test-selected minimum over evaluations (``MIN_TOP1``: optimistic, not a result). The lr
    search's holdout runs are not test results: they are ``holdout_table``'s."""
    return _error_rows(final_runs(rs.runs), ("final top-1 err", MIN_TOP1, "final top-5 err", MIN_TOP5))


def holdout_table(rs: RunSet) -> pd.DataFrame:
    """Per configuration of the lr search's selection trials (data.eval_on=holdout): the holdout
    error, final and minimum over evaluations. They choose the learning rate; they are not test
    results."""
    return _error_rows(holdout_runs(rs.runs), ("final holdout top-1 err", "min holdout top-1 err over evals",
                                               "final holdout top-5 err", "min holdout top-5 err over evals"))


TARGET_BASELINE = "sgd"  # the tuned SGD-momentum configuration sets the speed targets
SPEED_BASELINES = ("sgd", "adam", "adamw")
N_BOOT = 10_000
MIN_BOOT_SEEDS = 3  # per side, for a bootstrap interval


def sgd_targets(rs: RunSet, offsets=(1.0, 5.0)) -> dict:
    """Target errors per setting: the selected SGD-momentum configuration's median final error
    (finished runs on the val/test split) + each tolerance, in points."""
    sel = selected_groups(rs.runs)
    out = {}
    base = sel[(sel.optimizer == TARGET_BASELINE) & (sel.status == "finished") & (sel.eval_on == "val")]
    for key, g in base.groupby(SETTING):
        out[key] = [float(g.final_top1.median()) + o for o in offsets]
    return out


# An error is 100 * k / n: the target (SGD's median final error + whole points) is often a number of
# mistakes, and an evaluation with exactly that many is at it, though the two floats may differ in
# the last bits (12.580000000000002 against 7.579999999999998 + 5). Two different counts differ by
# at least 100 / n (> 1e-6 for any split below 10^8 images), float rounding by ~1e-14
TARGET_TIE = 1e-9


def no_target_reason(selected: pd.DataFrame, setting) -> str:
    """Why a setting has no speed target (``sgd_targets`` has none for it): no SGD-momentum run at
    all, or none of the selected SGD-momentum configuration's runs finished (all diverged)."""
    sgd = selected[(selected.dataset == setting[0]) & (selected.model == setting[1])
                   & (selected.optimizer == TARGET_BASELINE) & (selected.eval_on == "val")] if len(selected) else selected
    if not len(sgd):
        return "no SGD baseline"
    return f"no target: none of SGD-momentum's {len(sgd)} run(s) finished"


def steps_to_target(rs: RunSet, runs: pd.DataFrame, target: float) -> list[tuple[float, float]]:
    """Per run (rows of ``rs.runs``): (step, training seconds) of its first evaluation at or below
    ``target`` (up to float rounding, ``TARGET_TIE``), or (inf, inf) when it never got there. A diverged run never counts as having got
    there, even if it passed the target before diverging: its training did not deliver a model.
    (nan, nan) for a finished run whose curve has holes (``eval_curve_complete``): a lost or
    unreadable evaluation may have been its first at the target, so it has no value."""
    out = []
    complete = eval_curve_complete(runs)
    for d, status, whole in zip(runs.run_dir, runs.status, complete):
        if status != "diverged" and not whole:
            out.append((math.nan, math.nan))
            continue
        ev = rs.evals[rs.evals.run_dir == d]
        hit = ev[ev.val_top1_err <= target + TARGET_TIE * max(1.0, abs(target))]
        ok = len(hit) and status != "diverged"
        out.append((float(hit.step.iloc[0]), float(hit.wall_time_s.iloc[0])) if ok else (math.inf, math.inf))
    return out


def coarser_grid(rs: RunSet, per_epoch: int) -> RunSet | None:
    """``rs`` as if every run had been evaluated ``per_epoch`` times an epoch instead of its
    trainer.evals_per_epoch E: each run keeps every (E / per_epoch)-th of its evaluations, in step
    order, which are the ones a run at ``per_epoch`` would have made (evaluations are evenly spaced
    in steps, the last at the epoch's end; training does not depend on them). None where a run's E
    is not a multiple of ``per_epoch``. Steps to target read off a noisy curve depend on where it is
    sampled; this is how much (the report's evaluation-grid table). The lr search's holdout runs
    are left as they are (no target or claim reads them)."""
    finals = final_runs(rs.runs)
    if finals.empty or "evals_per_epoch" not in finals:
        return None
    per_run = finals.evals_per_epoch.astype(int)
    if per_epoch < 1 or (per_run % per_epoch != 0).any():
        return None
    stride = dict(zip(finals.run_dir, per_run // per_epoch))
    ev = rs.evals
    index = ev.groupby("run_dir", sort=False).cumcount() + 1  # evals are in step order within a run
    keep = [i % stride.get(d, 1) == 0 for d, i in zip(ev.run_dir, index)]
    runs = rs.runs.copy()
    runs.loc[runs.run_dir.isin(stride), "evals_per_epoch"] = per_epoch
    return RunSet(runs, rs.epochs, rs.oscillation, list(rs.problems), ev[keep].reset_index(drop=True), rs.iters)


def same_protocol(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two sets of runs were evaluated the same way (and so have comparable curves)."""
    key = lambda df: set(map(tuple, df[PROTOCOL].astype(float).values.tolist()))  # noqa: E731
    return key(a) == key(b) and len(key(a)) == 1


def _median_ratio(base: np.ndarray, subj: np.ndarray) -> np.ndarray:
    """median(base) / median(subj) along the last axis; inf / inf (neither reaches) is NaN."""
    mb, ms = np.median(base, axis=-1), np.median(subj, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = mb / ms
    return np.where(np.isinf(mb) & np.isinf(ms), np.nan, r)


def speedup_ci(base_steps, subject_steps, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0):
    """Speed-up of the subject over the baseline, median(baseline steps) / median(subject steps)
    (> 1: the subject gets there in fewer steps), with a percentile bootstrap CI that resamples
    the seeds of each side independently. Runs that never reach the target count as infinitely
    many steps (so the median is finite while fewer than half of a side fail). Returns
    (ratio, low, high), the bounds the order statistics just outside the interval; resamples where neither median is finite are left out. Seeded: the same
    runs give the same interval."""
    base, subj = np.asarray(base_steps, float), np.asarray(subject_steps, float)
    point = float(_median_ratio(base, subj))
    if min(len(base), len(subj)) < MIN_BOOT_SEEDS:
        return point, math.nan, math.nan  # resampling one seed gives a zero-width "interval"
    rng = np.random.default_rng(seed)
    boots = _median_ratio(base[rng.integers(0, len(base), (n_boot, len(base)))],
                          subj[rng.integers(0, len(subj), (n_boot, len(subj)))])
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return point, math.nan, math.nan
    # no interpolation between order statistics (inf - inf), and rounded outwards
    lo = np.percentile(boots, 50 * (1 - level), method="lower")
    hi = np.percentile(boots, 50 * (1 + level), method="higher")
    return point, float(lo), float(hi)


def _fmt_ratio(x: float) -> str:
    return "∞" if math.isinf(x) else ("—" if math.isnan(x) else f"{x:.2f}")


def fmt_number(x: float) -> str:
    """4 significant digits below 1,000 (an error in %, seconds), every digit of a count above it:
    .4g wrote 125,125 steps as 1.251e+05 and 1,696.5 as 1696."""
    if pd.isna(x):
        return "—"
    if math.isinf(x):
        return f"{x:g}"
    if abs(x) >= 1000:
        return f"{x:.0f}" if x == round(x) else f"{x:.1f}"
    return f"{x:.4g}"


def _median_reached(values) -> str:
    """Median over the runs that have a value (NaN: a curve with holes, left out and flagged), with
    how many reached the target; "…; k left out" where some runs have no value."""
    known = [v for v in values if not math.isnan(v)]
    n, out = len(known), len(values) - len(known)
    left = f"; {out} left out, see flags" if out else ""
    reached = [v for v in known if math.isfinite(v)]
    if not reached:
        return f"not reached (0/{n}{left})"
    med = float(np.median(known))
    return f"{_fmt_ratio(med) if math.isinf(med) else fmt_number(med)} ({len(reached)}/{n} reached{left})"


TRAIN_LOSS_SPAN = 0.1  # of the step budget: the span "train loss at x %" averages over


def train_loss_at(rs: RunSet, run_dir: str, budget: float, frac: float) -> float:
    """Training loss at ``frac`` of the run's step budget B: the mean loss over the steps of the
    logging windows that end in (frac x B - 0.1 B, frac x B], each window weighted by its number
    of steps; NaN when none ends in that span (logged less often than every 0.1 B steps: an earlier
    window is the loss of another point of training, not of this one). Read at that step, not at an
    epoch end. Records written before windows were logged hold one batch's loss per line: each line
    then counts as a window of one step."""
    it = rs.iters[rs.iters.run_dir == run_dir]
    if it.empty or not math.isfinite(budget):
        return math.nan
    at = frac * budget
    span = it[(it.step <= at + 1e-9) & (it.step > at - TRAIN_LOSS_SPAN * budget)]
    if span.empty:
        return math.nan
    windowed = span.train_loss_window.notna()
    loss = span.train_loss_window.where(windowed, span.loss)
    steps = span.window_steps.where(windowed & span.window_steps.notna(), 1.0)
    return float((loss * steps).sum() / steps.sum())


def speed_table(rs: RunSet, offsets=(1.0, 5.0), fractions=(0.1, 0.25, 0.5, 1.0)) -> pd.DataFrame:
    """Per configuration: median steps (and training seconds) to each target with the number of
    seeds that reached it, the speed-up over each baseline at the first target with a bootstrap
    95 % CI, train loss at fractions of the step budget, the val-error AUC (secondary) and
    images/s. Targets only apply to runs evaluated on the val/test split, where they were set."""
    if final_runs(rs.runs).empty or rs.evals.empty:
        return pd.DataFrame()
    targets = sgd_targets(rs, offsets)
    sel = selected_groups(rs.runs)
    rows = []
    # the val/test runs only: the lr search's holdout runs have no target (set on the val/test
    # split), and their AUC would be a holdout error in a table of test results
    for key, g in final_runs(rs.runs).groupby(GROUP, dropna=False, sort=True):
        info = dict(zip(GROUP, key))
        row = {**info, "n": len(g), "diverged": int((g.status == "diverged").sum())}
        mixed = timing_mixed(g)  # seconds of different machines (or compile on/off): no median
        tgt = targets.get((info["dataset"], info["model"])) if info["eval_on"] == "val" else None
        for i, (off, t) in enumerate(zip(offsets, tgt or [None] * len(offsets))):
            col = f"SGD+{off:g}"
            if t is None:
                row[f"steps to {col}"] = row[f"s to {col}"] = (
                    no_target_reason(sel, (info["dataset"], info["model"])) if info["eval_on"] == "val" else "—")
                continue
            hits = steps_to_target(rs, g, t)
            row[f"steps to {col}"] = _median_reached([h[0] for h in hits])
            row[f"s to {col}"] = _median_reached([h[1] for h in hits]) if not mixed else mixed
            if i:
                continue
            here = sel[(sel.dataset == info["dataset"]) & (sel.model == info["model"]) & (sel.eval_on == "val")]
            for b in SPEED_BASELINES:
                base = here[here.optimizer == b]
                col = f"speed-up vs {b} [95 % CI]"
                if base.empty or b == info["optimizer"]:
                    row[col] = "—"
                elif not same_protocol(base, g):
                    row[col] = "— (evaluated differently)"
                else:
                    # runs whose curves have holes have no steps (NaN): left out, flagged
                    base_hits = [h[0] for h in steps_to_target(rs, base, t) if not math.isnan(h[0])]
                    subj_hits = [h[0] for h in hits if not math.isnan(h[0])]
                    r, lo, hi = speedup_ci(base_hits, subj_hits)
                    if not math.isnan(lo):
                        ci = f"[{_fmt_ratio(lo)}, {_fmt_ratio(hi)}]"
                    elif min(len(base_hits), len(subj_hits)) < MIN_BOOT_SEEDS:
                        ci = f"[< {MIN_BOOT_SEEDS} seeds]"
                    else:  # enough seeds, but no resample has a finite ratio: neither side reached it
                        ci = "[neither reached]"
                    row[col] = f"{_fmt_ratio(r)} {ci}"
        # finished runs only: a diverged run's history stops early; it and a run with lost lines (a
        # train-loss curve with holes) are counted in the cell, "(4 of 5)"
        ok = g[g.status == "finished"]
        for frac in fractions:
            row[f"train loss @{int(frac * 100)}%"] = mean_std(
                [train_loss_at(rs, d, b, frac) if whole else math.nan
                 for d, b, whole in zip(ok.run_dir, ok.budget_steps, lines_complete(ok))], len(g))
        row["val-err AUC"] = mean_std([a if whole else math.nan for a, whole in
                                       zip(area_under_val_error(rs, ok.run_dir), eval_curve_complete(ok))], len(g))
        row["images/s"] = mean_std(g.images_per_s) if not mixed else mixed
        rows.append(row)
    df = pd.DataFrame(rows).drop(columns=["config_id"])
    speedups = [c for c in df.columns if c.startswith("speed-up vs")]
    if not speedups:
        return df
    # the speed-ups right after the first target's columns, whatever row introduced them
    rest = [c for c in df.columns if c not in speedups]
    at = rest.index(f"s to SGD+{offsets[0]:g}") + 1
    return df[rest[:at] + speedups + rest[at:]].fillna("—")


def timing_mixed(g: pd.DataFrame) -> str:
    """What a row's seconds and images/s cells say instead of a median when its runs were timed
    differently: on different platforms (records.timing_platform), or with trainer.compile on and
    off, or on different optimizer paths (run.json's optimizer_impl; a compiled path's seconds
    include its compilation), or with the oscillation tracker at different intervals or off (its
    work is part of every step of its windows); "" when they were timed alike."""
    if "platform" in g and g.platform.nunique() > 1 or len(_cpu_models(g)) > 1:
        return MIXED
    if any(c in g and g[c].nunique() > 1 for c in ("compile", "optimizer_impl", "oscillation_every", *TIMING_SETUP)):
        return MIXED_SETUP
    return ""


def _cpu_models(g: pd.DataFrame) -> set[str]:
    """The CPU models recorded by these runs (records before 2026-12-01 have none: not a model)."""
    return set(g.cpu_model) - {""} if "cpu_model" in g else set()


def timing_notes(runs: pd.DataFrame) -> list[dict]:
    """Flags for seconds and images/s measured on different platforms (records.timing_platform),
    with trainer.compile on and off, or on different optimizer paths: within a row (its time cells
    are left out), and between the optimizers of a setting (their seconds compare machines, or
    compilation, as much as optimizers)."""
    if runs.empty or "platform" not in runs:
        return []
    notes = []
    for key, g in runs.groupby(GROUP, dropna=False, sort=True):
        info = dict(zip(GROUP, key))
        where = f"(timing) {len(g)} runs of {info['optimizer']} on {info['dataset']}/{info['model']}" + (
            " (lr search trials, holdout split)" if info["eval_on"] == HOLDOUT else "")
        if g.platform.nunique() > 1:
            notes.append({"run_dir": where,
                          "problem": f"timed on {g.platform.nunique()} platforms ({'; '.join(sorted(set(g.platform)))}): "
                                     f"their seconds and images/s are not pooled (steps are)"})
        if len(_cpu_models(g)) > 1:
            notes.append({"run_dir": where, "problem": f"timed on {len(_cpu_models(g))} CPU models "
                          f"({'; '.join(sorted(_cpu_models(g)))}): their seconds and images/s are not pooled (steps are)"})
        if "compile" in g and g.compile.nunique() > 1:
            notes.append({"run_dir": where, "problem": f"{int(g.compile.sum())} trained with trainer.compile=true, "
                          f"{int((~g.compile.astype(bool)).sum())} without: their seconds and images/s (which include "
                          f"compilation) are not pooled (steps and errors are)"})
        if "oscillation_every" in g and g.oscillation_every.nunique() > 1:
            notes.append({"run_dir": where, "problem": "trained with the oscillation tracker at different intervals "
                          "(trainer.oscillation_every: " + _tracker_counts(g.oscillation_every) + "): its work is part "
                          "of their steps, so their seconds and images/s are not pooled (steps and errors are)"})
        for column, key in TIMING_SETUP.items():
            if column in g and g[column].nunique() > 1:
                notes.append({"run_dir": where, "problem": f"trained with {key} " + _value_counts(g[column])
                              + ": their seconds and images/s are not pooled (steps and errors are)"})
        if "optimizer_impl" in g and g.optimizer_impl.nunique() > 1:
            counts = g.optimizer_impl.value_counts()
            notes.append({"run_dir": where, "problem": "pooled across optimizer paths (run.json's optimizer_impl: "
                          + ", ".join(f"{i} {n}" for i, n in sorted(counts.items())) + "): they differ in float "
                          "rounding and in time, so their seconds and images/s are not pooled; errors and steps "
                          "are, and may differ by path"})
    for (dataset, model), g in selected_groups(runs).groupby(SETTING):
        if len(_cpu_models(g)) > 1:
            models = g.groupby("optimizer").cpu_model.agg(lambda m: "; ".join(sorted(set(m) - {""})) or "unrecorded")
            notes.append({"run_dir": f"(timing) {dataset}/{model}",
                          "problem": "optimizers timed on different CPU models (" + ", ".join(
                              f"{opt}: {m}" for opt, m in models.items()) + "): compare steps, not seconds"})
        per_opt = g.groupby("optimizer").platform.agg(lambda p: "; ".join(sorted(set(p))))
        if per_opt.nunique() > 1:
            notes.append({"run_dir": f"(timing) {dataset}/{model}",
                          "problem": "optimizers timed on different platforms (" + ", ".join(
                              f"{opt}: {p}" for opt, p in per_opt.items()) + "): compare steps, not seconds"})
        if "compile" in g:
            per_opt = g.groupby("optimizer").compile.agg(lambda c: (int(c.astype(bool).sum()), len(c)))
            if len({"none" if k == 0 else "all" if k == n else "some" for k, n in per_opt}) > 1:
                notes.append({"run_dir": f"(timing) {dataset}/{model}",
                              "problem": "optimizers trained with and without trainer.compile (compiled: " + ", ".join(
                                  f"{opt} {k} of {n}" for opt, (k, n) in per_opt.items() if k) + "; the others "
                                  "none): their seconds include compilation for some only; compare steps, not "
                                  "seconds"})
        if "oscillation_every" in g:
            # compared as sets of intervals: a side with fewer seeds (a missing or diverged one) is not
            # a different interval; the counts are only said
            intervals = g.groupby("optimizer").oscillation_every.agg(lambda e: tuple(sorted(set(e))))
            if intervals.nunique() > 1:
                per_opt = g.groupby("optimizer").oscillation_every.agg(_tracker_counts)
                notes.append({"run_dir": f"(timing) {dataset}/{model}",
                              "problem": "optimizers trained with the oscillation tracker at different intervals ("
                                         + "; ".join(f"{opt}: {t}" for opt, t in per_opt.items()) + "): its work is "
                                         "part of every step, so their seconds compare it too; compare steps, not seconds"})
        for column, key in TIMING_SETUP.items():
            per_opt = g.groupby("optimizer")[column] if column in g else None
            if per_opt is not None and per_opt.agg(lambda v: frozenset(map(str, v))).nunique() > 1:
                notes.append({"run_dir": f"(timing) {dataset}/{model}",
                              "problem": f"optimizers trained with different {key} (" + "; ".join(
                                  f"{opt}: {counts}" for opt, counts in per_opt.agg(_value_counts).items())
                              + "): their seconds compare that too; compare steps, not seconds"})
        spread = _speed_spread(g)
        if spread:
            notes.append({"run_dir": f"(timing) {dataset}/{model}", "problem": spread})
    return notes


def train_loss_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag where the runs of a setting logged their loss over different windows
    (trainer.log_every, not part of a run's identity): train loss @x % averages the logging windows
    that end in a span of the step budget, so its value depends on the window as well as on the
    optimizer (compare.py keeps one log_every for every trial)."""
    if runs.empty or "log_every" not in runs:
        return []
    notes = []
    for (dataset, model), g in selected_groups(final_runs(runs)).groupby(SETTING):
        if g.log_every.nunique() > 1:
            per_opt = g.groupby("optimizer").log_every.agg(lambda v: ", ".join(sorted(set(v), key=str)))
            notes.append({"run_dir": f"(train loss) {dataset}/{model}",
                          "problem": "runs logged their loss every different numbers of steps (trainer.log_every: "
                                     + "; ".join(f"{opt}: {v}" for opt, v in per_opt.items()) + "): train loss @x % "
                                     "averages the logging windows ending in each span, so those columns compare "
                                     "windows as well as optimizers"})
    return notes


def _value_counts(values: pd.Series) -> str:
    """``true in 3, false in 2`` (most first)."""
    counts = values.map(lambda v: str(v).lower()).value_counts()
    return ", ".join(f"{v} in {n}" for v, n in counts.items())


# Past this max/min of images/s between the seeds of one configuration (the same code and data, so
# one speed on a dedicated machine: a few % of noise), the machine's load decided the seconds
SPEED_SPREAD = 1.10


def _speed_spread(g: pd.DataFrame) -> str:
    """A flag where images/s varied between the seeds of one selected configuration by more than
    SPEED_SPREAD: the seconds and images/s then measure the machine's load (other jobs, the launch
    order of the runs) as much as the optimizers."""
    if "images_per_s" not in g:
        return ""
    rates = g[g.status == "finished"].dropna(subset=["images_per_s"])
    rates = rates[rates.images_per_s > 0].groupby("optimizer").images_per_s
    lo, hi, means = rates.min(), rates.max(), rates.mean()
    if lo.empty:
        return ""
    worst = (hi / lo).idxmax()
    if hi[worst] / lo[worst] <= SPEED_SPREAD:
        return ""
    # runs of the worst configuration set up or timed differently (layout, workers, platform...):
    # that, not only the load, may be the cause (helper-87: a channels_last mix was blamed on the load)
    cause = ("its runs were set up or timed differently (see the other flags), or the machine's load varied"
             if timing_mixed(g[g.optimizer == worst]) else "the machine's load varied")
    return (f"images/s varied between the seeds of one configuration by up to {hi[worst] / lo[worst]:.2f}x "
            f"({worst}: {lo[worst]:,.0f} to {hi[worst]:,.0f}), where the same code on the same data runs at one "
            f"speed on a dedicated machine: {cause}, so the seconds and images/s measure it as "
            f"much as the optimizers (their mean images/s span {means.max() / means.min():.2f}x); compare steps, "
            f"not seconds")


def _tracker_counts(every: pd.Series) -> str:
    """``every 10: 2 runs, off: 1 run`` for a column of trainer.oscillation_every (0: off)."""
    counts = every.value_counts()
    return ", ".join(f"{'off' if e == 0 else f'every {e}'}: {n} run{'s' if n > 1 else ''}"
                     for e, n in sorted(counts.items()))


def oscillation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose oscillation lines describe a whole training: finished (a diverged run's lines
    stop early, and its last steps are the blow-up), with no metrics line lost and no non-finite
    oscillation value (records' osc_gap)."""
    if runs.empty:
        return runs
    whole = runs.osc_gap.fillna("") == "" if "osc_gap" in runs else True
    return runs[(runs.status == "finished") & lines_complete(runs) & whole]


def oscillation_table(rs: RunSet) -> pd.DataFrame:
    """Per configuration, over its finished runs with oscillation lines (``oscillation_runs``;
    diverged ones are counted in the error and speed tables, and flagged): the mean sign-flip
    fraction and path efficiency. Path efficiency depends on the window it is measured over
    (records' osc_window): runs measured over different windows are never averaged."""
    if rs.oscillation.empty:
        return pd.DataFrame()
    per_run = rs.oscillation.groupby("run_dir").agg(flip=("flip_fraction", "mean"),
                                                    eff=("path_efficiency", "mean")).reset_index()
    # the final (val/test) runs, as the claims on it: the lr search's trials trained on less data
    merged = oscillation_runs(final_runs(rs.runs)).merge(per_run, on="run_dir")
    for col in ("osc_window", "osc_every"):
        if col not in merged:
            merged[col] = ""
    # a setting whose rows were measured over different windows (recorded at different intervals):
    # each cell names its window (interval)
    windows = merged.groupby(SETTING).osc_window.nunique()
    intervals = merged.groupby(SETTING).osc_every.nunique()
    rows = []
    for key, g in merged.groupby(GROUP, dropna=False, sort=True):
        info = dict(zip(GROUP, key))
        setting = (info["dataset"], info["model"])
        every = f" (every {g.osc_every.iloc[0]})" if intervals.get(setting, 1) > 1 else ""
        flip, eff = mean_std(100 * g.flip, len(g)) + " %" + every, mean_std(100 * g.eff, len(g))
        if g.osc_every.nunique() > 1:
            flip = eff = MIXED_INTERVAL
        elif g.osc_window.nunique() > 1:
            eff = MIXED_WINDOW
        elif eff != "—":
            eff += " %" + (f" (window {g.osc_window.iloc[0]})" if windows.get(setting, 1) > 1 else "") + every
        rows.append({**info, "n": len(g), "update sign-flip fraction": flip, "path efficiency": eff})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).drop(columns=["config_id"])


def oscillation_notes(runs: pd.DataFrame) -> list[dict]:
    """Flags for oscillation measures recorded at different intervals (both are means over the
    recorded steps) or path efficiencies measured over different windows (trainer.oscillation_every /
    the lines' path_window): within a row (its cell is left out), and between the optimizers of a
    setting (the claims give no verdict on them)."""
    if runs.empty or "osc_window" not in runs:
        return []
    osc = oscillation_runs(final_runs(runs))  # the oscillation table's runs
    osc = osc[osc.osc_window != ""]
    selected = selected_groups(runs)  # the claims' configurations, chosen over every run
    selected = osc[osc.run_dir.isin(selected.run_dir)]
    notes = []
    if "osc_every" in osc:
        notes += _mixed_notes(osc, selected, "osc_every", "sign flips and path efficiency recorded at different intervals",
                              lambda e: f"every {e} steps", "each is a mean over the recorded steps, other points of "
                              "training", "the claims on them give no verdict")
    notes += _mixed_notes(osc, selected, "osc_window", "path efficiency measured over different windows",
                          lambda w: f"{w} steps", "it depends on the window by definition",
                          "the claims on it give no verdict")
    return notes


def _mixed_notes(osc: pd.DataFrame, selected: pd.DataFrame, column: str, measure: str, unit, why_row: str,
                 why_setting: str) -> list[dict]:
    """oscillation_notes' flags for one ``column`` (the interval or the window): runs of one row, and
    the optimizers of a setting, that differ in it."""
    notes = []
    for key, g in osc.groupby(GROUP, dropna=False, sort=True):
        if g[column].nunique() > 1:
            info = dict(zip(GROUP, key))
            counts = g[column].value_counts()
            notes.append({"run_dir": f"(oscillation) {len(g)} runs of {info['optimizer']} on "
                                     f"{info['dataset']}/{info['model']}",
                          "problem": f"{measure} (" + ", ".join(f"{unit(v)}: {n} run(s)" for v, n in sorted(counts.items()))
                                     + f"): not averaged; {why_row}"})
    for (dataset, model), g in selected.groupby(SETTING):
        per_opt = g.groupby("optimizer")[column].agg(lambda v: "; ".join(sorted(set(v))))
        if per_opt.nunique() > 1:
            notes.append({"run_dir": f"(oscillation) {dataset}/{model}",
                          "problem": f"optimizers' {measure} (" + ", ".join(f"{opt}: {unit(v)}" for opt, v in per_opt.items())
                                     + f"): not comparable; {why_setting}"})
    return notes


def area_under_val_error(rs: RunSet, run_dirs) -> list[float]:
    """Mean val error over a run's evaluations (evenly spaced in steps): the normalised area
    under its val-error curve. Secondary: it also rewards a good start, and early evaluations
    with stale BatchNorm statistics distort it (see trainer.bn_recalibrate)."""
    out = []
    for d in run_dirs:
        ev = rs.evals[rs.evals.run_dir == d]
        steps = ev.step.to_numpy()
        # evenly spaced from the start (up to the step rounding of evaluations inside an epoch): with
        # trainer.eval_every=3 over 4 epochs the evaluations at epochs 3 and 4 are not, and their
        # mean is no area (helper-92)
        gaps = np.diff(np.concatenate([[0], steps]))
        even = len(steps) > 0 and gaps.max() - gaps.min() <= 1
        out.append(float(ev.val_top1_err.mean()) if even else np.nan)
    return out
