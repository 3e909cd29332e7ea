"""Evaluate the paper's claims (results/claims.yaml) against logged runs.

Each claim compares a metric of the subject optimizer with a baseline, per setting (dataset x
model), on the selected configuration of each (see tables.selected_groups). Verdicts:
Supported (the subject is better and, with >= 3 seeds per side, a one-sided Welch t-test gives
p < alpha), Not supported, or Insufficient data. Diverged runs enter error metrics as 100 %.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from adarem.results.records import RunSet
from adarem.results.tables import DIVERGED_ERROR, SETTING, area_under_val_error, selected_groups

METRICS = {
    "final_top1": "final top-1 error (%)",
    "val_error_auc": "area under the val-error curve (mean val top-1 error over epochs, %)",
    "flip_fraction": "fraction of weight updates that change sign between steps",
}


def load_claims(path: Path) -> dict:
    with open(path) as f:
        spec = yaml.safe_load(f)
    for c in spec.get("claims", []):
        missing = {"id", "text", "metric", "subject", "baseline", "better"} - set(c)
        if missing:
            raise ValueError(f"claim {c.get('id', '?')} in {path} lacks {sorted(missing)}")
        if c["metric"] not in METRICS:
            raise ValueError(f"claim {c['id']}: unknown metric {c['metric']!r}; use one of {sorted(METRICS)}")
    return spec


def metric_values(rs: RunSet, runs: pd.DataFrame, metric: str) -> list[float]:
    if metric == "final_top1":
        return [DIVERGED_ERROR if s == "diverged" else v for s, v in zip(runs.status, runs.final_top1)]
    if metric == "val_error_auc":
        aucs = area_under_val_error(rs, runs.run_dir)
        return [DIVERGED_ERROR if s == "diverged" else v for s, v in zip(runs.status, aucs)]
    if metric == "flip_fraction":
        osc = rs.oscillation[rs.oscillation.run_dir.isin(runs.run_dir)]
        return osc.groupby("run_dir").flip_fraction.mean().tolist()
    raise ValueError(metric)


def evaluate_claims(rs: RunSet, spec: dict, alpha: float = 0.05) -> pd.DataFrame:
    rows = []
    sel = selected_groups(rs.runs)
    settings = sorted(set(map(tuple, sel[SETTING].values.tolist()))) if not sel.empty else []
    paper = spec.get("paper_numbers") or {}
    for claim in spec.get("claims", []):
        for setting in settings:
            here = sel[(sel.dataset == setting[0]) & (sel.model == setting[1])]
            a = [v for v in metric_values(rs, here[here.optimizer == claim["subject"]], claim["metric"]) if not math.isnan(v)]
            b = [v for v in metric_values(rs, here[here.optimizer == claim["baseline"]], claim["metric"]) if not math.isnan(v)]
            row = {"claim": claim["id"], "text": claim["text"], "dataset": setting[0], "model": setting[1],
                   "metric": claim["metric"], "subject": claim["subject"], "baseline": claim["baseline"],
                   "n_subject": len(a), "n_baseline": len(b),
                   "subject_mean": float(np.mean(a)) if a else math.nan,
                   "baseline_mean": float(np.mean(b)) if b else math.nan, "p_value": math.nan}
            paper_vals = paper.get(f"{setting[0]}/{setting[1]}", {}).get(claim["metric"], {})
            row["paper_subject"] = paper_vals.get(claim["subject"], "")
            row["paper_baseline"] = paper_vals.get(claim["baseline"], "")
            if not a or not b:
                row["verdict"] = "Insufficient data"
            else:
                lower = claim["better"] == "lower"
                better = row["subject_mean"] < row["baseline_mean"] if lower else row["subject_mean"] > row["baseline_mean"]
                if len(a) >= 3 and len(b) >= 3:
                    if np.std(a) == 0 and np.std(b) == 0:
                        p = 0.0 if better else 1.0
                    else:
                        p = stats.ttest_ind(a, b, equal_var=False, alternative="less" if lower else "greater").pvalue
                    row["p_value"] = float(p)
                    row["verdict"] = "Supported" if better and p < alpha else "Not supported"
                else:
                    row["verdict"] = "Insufficient data"  # fewer than 3 seeds a side: no test
            rows.append(row)
    return pd.DataFrame(rows)
