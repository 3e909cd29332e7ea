"""Learning curves: val error and train loss against epoch and wall-clock, band over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adarem.results.records import RunSet  # noqa: E402
from adarem.results.tables import SETTING, selected_groups  # noqa: E402


def plot_curves(rs: RunSet, out_dir: Path) -> list[Path]:
    """One PNG per dataset x model, with the selected configuration of every optimizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sel = selected_groups(rs.runs)
    written = []
    if sel.empty or rs.epochs.empty:
        return written
    for (dataset, model), runs in sel.groupby(SETTING):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for opt, g in runs.groupby("optimizer"):
            ep = rs.epochs[rs.epochs.run_dir.isin(g.run_dir)]
            agg = ep.groupby("epoch").agg(
                err=("val_top1_err", "mean"), err_lo=("val_top1_err", "min"), err_hi=("val_top1_err", "max"),
                loss=("train_loss", "mean"), loss_lo=("train_loss", "min"), loss_hi=("train_loss", "max"),
                wall=("wall_time_s", "mean")).reset_index()
            label = f"{opt} (lr {g.lr.iloc[0]:g}, n={len(g)}, {int((g.status == 'diverged').sum())} diverged)"
            for col, (metric, lo, hi) in enumerate([("err", "err_lo", "err_hi"), ("loss", "loss_lo", "loss_hi")]):
                for row, x in enumerate(["epoch", "wall"]):
                    ax = axes[col, row]
                    xs = agg[x] + (1 if x == "epoch" else 0)
                    (line,) = ax.plot(xs, agg[metric], label=label)
                    ax.fill_between(xs, agg[lo], agg[hi], alpha=0.2, color=line.get_color())
        for col, ylabel in enumerate(["val top-1 error (%)", "train loss"]):
            for row, xlabel in enumerate(["epoch", "training wall-clock (s)"]):
                axes[col, row].set_xlabel(xlabel)
                axes[col, row].set_ylabel(ylabel)
                axes[col, row].grid(alpha=0.3)
        axes[1, 0].set_yscale("log")
        axes[1, 1].set_yscale("log")
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"{dataset} / {model}: mean over seeds, band = min..max")
        fig.tight_layout()
        path = out_dir / f"curves_{dataset}_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
