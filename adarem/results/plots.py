"""The plots of a report: learning curves against steps and wall-clock with confidence bands over
seeds, oscillation over training, and (for scripts/compare.py) the holdout score against lr."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from adarem.results.records import RunSet  # noqa: E402
from adarem.results.tables import SETTING, oscillation_runs, selected_groups, timing_mixed  # noqa: E402


def file_stem(dataset, model) -> str:
    """A file name for a setting: its label (which may name a path, ``toy (data.root=/a/b)``)
    with every character but letters, digits and ``.=@-`` made ``_``, and a short hash of the
    label, so that two labels that differ only in those characters never share a file. No spaces:
    the Markdown links to it stay links."""
    label = f"{dataset}_{model}"
    slug = re.sub(r"[^A-Za-z0-9.=@-]+", "_", label).strip("_")
    return f"{slug}_{hashlib.sha1(label.encode()).hexdigest()[:6]}" if slug != label else slug


def mean_ci(frame: pd.DataFrame, x: str, y: str, level: float = 0.95) -> pd.DataFrame:
    """Per value of ``x``: the mean of ``y`` over runs and its Student-t confidence interval (the
    band collapses onto the mean where only one run has a value)."""
    g = frame.dropna(subset=[y]).groupby(x)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    half = stats.t.ppf(0.5 + level / 2, np.maximum(out["count"] - 1, 1)) * out["std"].fillna(0) / np.sqrt(out["count"])
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def _label(opt: str, g: pd.DataFrame) -> str:
    return f"{opt} (lr {g.lr.iloc[0]:g}, n={len(g)}, {int((g.status == 'diverged').sum())} diverged)"


def _band(ax, agg: pd.DataFrame, x: str, label: str, n_runs: int | None = None):
    """The mean and its band; with ``n_runs``, only where every one of them has a value: past the
    step where one stopped (a divergence), the mean of the others is dashed, without a band, and the
    label says so (a plain mean of the survivors ended at their error, under a label counting all)."""
    short = agg["count"] < n_runs if n_runs else pd.Series(False, index=agg.index)
    full = agg[~short]
    if short.any():
        label = f"{label}; dashed: fewer runs (the mean of those left)"
    (line,) = ax.plot(full[x], full["mean"], label=label)
    ax.fill_between(full[x], full["lo"], full["hi"], alpha=0.2, color=line.get_color())
    if short.any():
        start = agg[agg[x] < agg.loc[short, x].min()].tail(1)  # joined to the last point of all runs
        rest = pd.concat([start, agg[short]])
        ax.plot(rest[x], rest["mean"], linestyle="--", color=line.get_color())


def plot_curves(rs: RunSet, out_dir: Path) -> list[Path]:
    """Per dataset x model, for the selected configuration of every optimizer: val error and train
    loss against steps, val error against training wall-clock (mean, band = 95 % CI over seeds),
    and, where oscillation was logged, path efficiency and sign flips against steps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sel = selected_groups(rs.runs)
    written = []
    if sel.empty or rs.evals.empty:
        return written
    for (dataset, model), runs in sel.groupby(SETTING):
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        osc_groups = []
        for opt, g in runs.groupby("optimizer"):
            # the runs the tables read curves from: none with holes in its curve (lines lost, NaN
            # evaluations); train loss and oscillation from finished runs only, not a diverged
            # run's partial history (its val error is drawn up to where it stopped)
            whole = g[g.curve_gap.fillna("").astype(str) == ""] if "curve_gap" in g else g
            finished = whole[whole.status == "finished"]
            ev = rs.evals[rs.evals.run_dir.isin(whole.run_dir)]
            label = _label(opt, g)
            _band(axes[0], mean_ci(ev, "step", "val_top1_err"), "step", label, n_runs=len(whole))
            it = rs.iters[rs.iters.run_dir.isin(finished.run_dir)]
            if not it.empty:
                y = "train_loss_window" if it.train_loss_window.notna().all() else "loss"
                _band(axes[1], mean_ci(it, "step", y), "step", label)
            # wall-clock differs per seed: the band is over seeds at each evaluation index; none
            # for runs timed on different platforms or with compile on and off (tables.timing_notes flags them)
            if not timing_mixed(g):
                ev = ev.assign(k=ev.groupby("run_dir").cumcount())
                wall = ev.groupby("k").wall_time_s.mean().rename("wall")
                _band(axes[2], mean_ci(ev, "k", "val_top1_err").join(wall, on="k"), "wall", label, n_runs=len(whole))
            osc_runs = oscillation_runs(g)  # the oscillation table's runs (no lost lines, no non-finite value)
            osc = rs.oscillation[rs.oscillation.run_dir.isin(osc_runs.run_dir)]
            if not osc.empty:
                # path efficiency depends on its window, and both measures are read at the recorded
                # steps: runs of other windows, or recorded at other intervals, are never averaged
                osc_groups.append((label, osc, set(osc_runs.osc_window) if "osc_window" in osc_runs else set(),
                                   set(osc_runs.osc_every) - {""} if "osc_every" in osc_runs else set()))
        for ax, (xlabel, ylabel) in zip(axes, [("optimizer step", "val top-1 error (%)"),
                                               ("optimizer step", "train loss (window mean)"),
                                               ("training wall-clock (s)", "val top-1 error (%)")]):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[1].set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{dataset} / {model}: mean over seeds, band = 95 % CI")
        fig.tight_layout()
        path = out_dir / f"curves_{file_stem(dataset, model)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        if osc_groups:
            written.append(_plot_oscillation(osc_groups, out_dir / f"oscillation_{file_stem(dataset, model)}.png",
                                             f"{dataset} / {model}"))
    return written


def _plot_oscillation(groups, path: Path, title: str) -> Path:
    """``groups``: (label, oscillation lines, the runs' path windows, their record intervals) per
    optimizer. Path efficiency depends on its window: a group whose runs used several is not drawn
    in that panel. Both measures are read at the recorded steps: a group whose runs were recorded at
    several intervals is drawn in neither (its mean would change runs from step to step), as the
    tables leave its cells out. Where the groups' windows or intervals differ, each label names its own."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    differ = len({frozenset(w) for _, _, w, _ in groups}) > 1
    intervals_differ = len({frozenset(e) for _, _, _, e in groups}) > 1
    for label, osc, windows, intervals in groups:
        one_interval = len(intervals) <= 1
        one_window = len(windows) <= 1 and not any("/" in str(w) for w in windows)  # "10/200": a run of two
        if not one_interval:
            label = f"{label}, mixed record intervals: not drawn"
        elif not one_window:
            label = f"{label}, mixed windows: path efficiency not drawn"
        elif differ:
            label = f"{label}, window {next(iter(windows), '?')}"
        if one_interval and intervals_differ:
            label += f", every {next(iter(intervals), '?')} steps"
        for ax, y, drawn in ((axes[0], "path_efficiency", one_window and one_interval),
                             (axes[1], "flip_fraction", one_interval)):
            if drawn:
                _band(ax, mean_ci(osc, "step", y), "step", label)
            else:
                ax.plot([], [], label=label)  # keeps the colours of both panels in step
    for ax, ylabel in zip(axes, ["path efficiency (1 = straight)", "update sign-flip fraction"]):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: oscillation over training, mean over seeds, band = 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_selection(selection: pd.DataFrame, path: Path) -> Path:
    """The hyperparameter search: mean holdout error over the selection seeds against lr, one curve
    per optimizer (and weight decay, when searched), the chosen point starred; a trial that failed
    or diverged is an x at the top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sel = selection[selection.stage == "select"]
    fig, ax = plt.subplots(figsize=(8, 5))
    finite = sel.score[np.isfinite(sel.score)]
    top = float(finite.max()) * 1.05 if len(finite) else 100.0
    for (opt, wd), g in sel.groupby(["optimizer", "weight_decay"]):
        pts = g.groupby("lr").agg(score=("score", "mean"), chosen=("chosen", "any")).reset_index()
        label = opt if sel[sel.optimizer == opt].weight_decay.nunique() == 1 else f"{opt} wd {wd:g}"
        ok = pts[np.isfinite(pts.score)]
        (line,) = ax.plot(ok.lr, ok.score, marker="o", ms=3, label=label)
        bad = pts[~np.isfinite(pts.score)]
        ax.scatter(bad.lr, [top] * len(bad), marker="x", color=line.get_color())
        best = pts[pts.chosen]
        ax.scatter(best.lr, best.score, marker="*", s=160, color=line.get_color(), edgecolor="black", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("holdout top-1 error (%), mean over selection seeds")
    ax.set_title("Hyperparameter search: * = chosen, x at the top = failed or diverged")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
