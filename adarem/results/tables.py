"""Aggregate runs over seeds into the test-error, training-speed and oscillation tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adarem.results.records import RunSet

GROUP = ["dataset", "model", "optimizer", "eval_on", "lr", "weight_decay", "epochs", "batch_size", "config_id"]
SETTING = ["dataset", "model"]
DIVERGED_ERROR = 100.0  # a diverged run's error where a number is needed (claims): the worst possible


def mean_std(values) -> str:
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def selected_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and optimizer, the configuration the comparison is about: evaluated on the
    val/test split, the one run with the most seeds, ties broken by the lower mean final error."""
    if runs.empty:
        return runs
    r = runs[runs.eval_on == "val"].copy()
    r["_err"] = r.final_top1.fillna(DIVERGED_ERROR)
    stats = r.groupby(GROUP, dropna=False).agg(n=("seed", "count"), err=("_err", "mean")).reset_index()
    stats = stats.sort_values(["n", "err"], ascending=[False, True])
    best = stats.drop_duplicates(subset=SETTING + ["optimizer"], keep="first")
    return runs[runs.config_id.isin(best.config_id)]


def error_table(rs: RunSet) -> pd.DataFrame:
    if rs.runs.empty:
        return pd.DataFrame()
    rows = []
    for key, g in rs.runs.groupby(GROUP, dropna=False, sort=True):
        ok = g[g.status == "finished"]
        rows.append({**dict(zip(GROUP, key)), "n": len(g), "diverged": int((g.status == "diverged").sum()),
                     "final top-1 err": mean_std(ok.final_top1), "best top-1 err": mean_std(ok.best_top1),
                     "final top-5 err": mean_std(ok.final_top5), "best top-5 err": mean_std(ok.best_top5),
                     "_mean": ok.final_top1.mean() if len(ok) else math.nan})
    df = pd.DataFrame(rows).sort_values(["dataset", "model", "eval_on", "_mean"])
    return df.drop(columns=["_mean", "config_id"]).reset_index(drop=True)


def sgd_targets(rs: RunSet, offsets=(1.0, 5.0)) -> dict:
    """Target errors per setting: the selected SGD configuration's mean final error + offsets."""
    sel = selected_groups(rs.runs)
    out = {}
    for key, g in sel[(sel.optimizer == "sgd") & (sel.status == "finished")].groupby(SETTING):
        base = g.final_top1.mean()
        out[key] = [base + o for o in offsets]
    return out


def _first_reaching(curve: pd.DataFrame, target: float):
    hit = curve[curve.val_top1_err <= target]
    if hit.empty:
        return None
    first = hit.iloc[0]
    return first.epoch + 1, first.wall_time_s


def speed_table(rs: RunSet, offsets=(1.0, 5.0), fractions=(0.1, 0.25, 0.5, 1.0)) -> pd.DataFrame:
    if rs.runs.empty or rs.epochs.empty:
        return pd.DataFrame()
    targets = sgd_targets(rs, offsets)
    rows = []
    for key, g in rs.runs.groupby(GROUP, dropna=False, sort=True):
        info = dict(zip(GROUP, key))
        row = {**info, "n": len(g), "diverged": int((g.status == "diverged").sum())}
        ep = rs.epochs[rs.epochs.run_dir.isin(g.run_dir)]
        evals = ep.dropna(subset=["val_top1_err"]) if "val_top1_err" in ep else ep.iloc[0:0]
        tgt = targets.get((info["dataset"], info["model"]))
        for off, t in zip(offsets, tgt or [None] * len(offsets)):
            col = f"SGD+{off:g}"
            if t is None:
                row[f"epochs to {col}"] = row[f"time to {col} (s)"] = "no SGD baseline"
                continue
            hits = [_first_reaching(evals[evals.run_dir == d].sort_values("epoch"), t) for d in g.run_dir]
            reached = [h for h in hits if h is not None]
            suffix = "" if len(reached) == len(hits) else f" ({len(reached)}/{len(hits)} reached)"
            row[f"epochs to {col}"] = (mean_std([h[0] for h in reached]) + suffix) if reached else "not reached"
            row[f"time to {col} (s)"] = (mean_std([h[1] for h in reached]) + suffix) if reached else "not reached"
        epochs = info["epochs"]
        for frac in fractions:
            e = max(0, math.ceil(frac * epochs) - 1)
            vals = ep[(ep.epoch == e)].train_loss if "train_loss" in ep else []
            row[f"train loss @{int(frac * 100)}%"] = mean_std(vals)
        aucs = [evals[evals.run_dir == d].val_top1_err.mean() for d in g[g.status == "finished"].run_dir]
        row["val-err AUC"] = mean_std(aucs)
        row["images/s"] = mean_std(g.images_per_s)
        rows.append(row)
    return pd.DataFrame(rows).drop(columns=["config_id"])


def oscillation_table(rs: RunSet) -> pd.DataFrame:
    if rs.oscillation.empty:
        return pd.DataFrame()
    per_run = rs.oscillation.groupby("run_dir").agg(flip=("flip_fraction", "mean"),
                                                    eff=("path_efficiency", "mean")).reset_index()
    merged = rs.runs.merge(per_run, on="run_dir")
    rows = []
    for key, g in merged.groupby(GROUP, dropna=False, sort=True):
        eff = mean_std(100 * g.eff)
        rows.append({**dict(zip(GROUP, key)), "n": len(g), "update sign-flip fraction": mean_std(100 * g.flip) + " %",
                     "path efficiency": eff + " %" if eff != "—" else eff})
    return pd.DataFrame(rows).drop(columns=["config_id"])


def area_under_val_error(rs: RunSet, run_dirs) -> list[float]:
    out = []
    for d in run_dirs:
        ep = rs.epochs[rs.epochs.run_dir == d]
        out.append(float(ep.val_top1_err.dropna().mean()) if "val_top1_err" in ep and len(ep) else np.nan)
    return out
