"""Evaluate the paper's claims (adarem/results/claims.yaml) against logged runs.

Each claim compares a metric of the subject optimizer with a baseline, per setting (dataset x
model), on the selected configuration of each (see tables.selected_groups), one value per seed.
Diverged runs enter error metrics as 100 % error, ranked last (below). Per claim and setting:

- ``diff`` = mean(subject) - mean(baseline), with its 95 % Welch confidence interval
  (Welch-Satterthwaite degrees of freedom);
- ``hedges_g``: diff / pooled SD, times the exact small-sample correction
  J = Gamma(nu/2) / (sqrt(nu/2) Gamma((nu-1)/2)), nu = n_subject + n_baseline - 2;
- ``p``: one-sided Welch t-test in the claimed direction (``better: lower`` -> diff < 0);
- ``p_holm``: Holm's step-down adjustment of ``p`` over the family of every claim tested in the same
  setting (dataset x model): the claims of adarem/results/claims.yaml are one family per setting.

Verdicts (alpha = 0.05 unless told):

- Supported: p_holm < alpha.
- Contradicted: the one-sided p of the *opposite* direction, Holm-adjusted over the same family,
  is < alpha. Each direction is controlled at alpha, so a claim with no true difference gets a
  non-Inconclusive verdict with probability at most 2 alpha (a two-sided test at 2 alpha).
- Inconclusive: neither. ``mdd`` is then the smallest difference these seeds could detect:
  MDD = (t_{1 - alpha/m, nu} + t_{0.80, nu}) * s_pooled * sqrt(1/n_subject + 1/n_baseline), the
  usual normal-shift approximation with Student t quantiles, at 80 % power and at level alpha/m
  (m = the family's size: the level the smallest Holm-adjusted p must clear), nu as above.
  Steps to target is rank-tested: the t-based MDD does not describe that test, so none is given
  (NaN), except ``inf`` where no ranking of these seeds could make the claim Supported: even the
  smallest p the rank test can give (``rank_test_min_p``, 1/70 with 4 seeds a side), put in the
  family in place of the claim's own p beside the other claims' p-values, would not bring its
  Holm-adjusted p below alpha (``rank_test_can_support``). Holm tests the k-th smallest p at
  alpha/(m - k + 1), so a claim whose family's other p-values are tiny is tested at up to alpha:
  with 4 seeds a side it can be Supported when at least m - 3 other claims are, and never when
  fewer are. Given the other claims' p-values, no difference, however large, is then detectable.
- Insufficient data: a side has fewer than 2 values (Welch's variance needs >= 2 per side); such
  a row has no p and is not part of the Holm family. For steps to target also where the setting
  has no target (no SGD-momentum run, or none finished): the verdict says which, and n counts the
  runs each side has.
- Not comparable: the two sides' curves were evaluated differently (curve metrics), or their path
  efficiencies were measured over different windows.

Values per run: the oscillation metrics come from finished runs only (a diverged run's lines cover
part of a training and its blow-up); steps to target and the AUC leave out a finished run whose
val-error curve has holes (metrics lines lost after a crash, an evaluation without a finite error).
The report flags each such run.

Zero variance on a side (every seed of it the same value: discrete errors on a small test set,
steps to a target on a coarse evaluation grid, or seeds that do not change the run): Welch's t
leaves that side's uncertainty out. With both sides so it is infinite, which would give p = 0 and
a CI collapsed onto the difference from as few as 2 seeds a side, certainty that no sample of
seeds can give; with one side so it is a t on the other side's spread and degrees of freedom
alone (2 seeds a side, one 0.0001 apart: p ~ 3e-5). A placeholder value (a diverged run's 100 %
error or AUC; for steps to target, a seed that never got there, at the cap) stands for an outcome
and measures nothing: in a t-test it inflates its side's spread, so a seed diverging weakened the
verdict against the optimizer that diverged. Such claims are tested like steps to target, with
the exact permutation test on ranks (``rank_test_p``: the placeholder ranks last; every seed of
one side below every seed of the other gives 1 / C(n1 + n2, n1), 0.05 with 3 a side), and have
no CI, no Hedges' g and no t-based MDD (``none detectable`` where no ranking could make it
Supported): those describe the t model the test does not use. A rank-tested claim without
placeholders keeps the mean difference; with one it has none (its value would be set by the
arbitrary 100 % or cap). ``subject_mean`` / ``baseline_mean`` are the means of the measurements
only, and ``unmeasured_*`` count the placeholders left out of them (and ranked last in the test);
for steps to target a side with a seed that never got there has no mean (the speed table has
medians, with such seeds counted as infinitely slow).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import special, stats

from adarem.results.records import RunSet
from adarem.results.tables import (DIVERGED_ERROR, SETTING, area_under_val_error, eval_curve_complete,
                                   no_target_reason, oscillation_runs, same_protocol, selected_groups, sgd_targets,
                                   steps_to_target)

METRICS = {
    "final_top1": "final top-1 error (%)",
    "steps_to_target": "optimizer steps to the target val error (the selected SGD-momentum configuration's "
                       "median final error + the first tolerance); a run that never gets there (or diverged) "
                       "counts as the largest step budget of the two sides, and its p comes from a rank test",
    "val_error_auc": "area under the val-error curve (mean val top-1 error over the evaluations, %)",
    "flip_fraction": "fraction of weights whose two consecutive updates change sign",
    "path_efficiency": "mean per-weight path efficiency |theta_t+k - theta_t| / sum |dtheta| over a window "
                       "(1 = straight, 0 = back and forth)",
}
CSV_COLUMNS = ["claim", "metric", "subject", "baseline", "n_subject", "n_baseline", "diff", "ci_low", "ci_high",
               "hedges_g", "p", "p_holm", "verdict", "dataset", "model", "text", "subject_mean", "baseline_mean",
               "reached_subject", "reached_baseline",
               # runs whose value is a placeholder, not a measurement (a diverged run's 100 % error or
               # AUC; a seed that never reached the target): left out of the means, ranked last
               "unmeasured_subject", "unmeasured_baseline",
               # what decides a verdict beyond p_holm (Contradicted: p_opposite_holm < alpha) and what an
               # Inconclusive one could have detected (mdd; inf: none detectable), and the claim's direction
               "better", "p_opposite", "p_opposite_holm", "mdd"]
CURVE_METRICS = ("steps_to_target", "val_error_auc")  # need both sides evaluated the same way
MIN_SEEDS = 2
POWER = 0.8
STATISTICS_TEXT = (
    "Per claim and setting: the mean difference subject − baseline with its 95 % Welch confidence interval, "
    "Hedges' g (exact small-sample correction), the one-sided Welch t-test p in the claimed direction and its "
    "Holm adjustment over the family of all claims tested in the same setting (dataset × model); diverged runs "
    "count as 100 % error, ranked last by a rank test (below). Supported means Holm-adjusted p < {alpha:g}, Contradicted means the same holds for "
    "the opposite direction (each direction is its own Holm family at {alpha:g}, so a claim with no true difference "
    "gets Supported or Contradicted with probability up to {alpha2:g}: a two-sided test at that level), Inconclusive means neither, with `mdd` the smallest difference these seeds could "
    "detect, (t₁₋α/m,ν + t₀.₈,ν)·s_pooled·√(1/n₁ + 1/n₂) at 80 % power and level α/m (m claims in the family, "
    "ν = n₁ + n₂ − 2), and Insufficient data means a side has fewer than 2 seeds (or, for steps to target, that "
    "the setting has no target: no SGD-momentum run, or none finished). Steps to target: a seed that "
    "never reached the target (or diverged) counts as one step past the larger step budget of the two sides, and "
    "p comes from an exact one-sided permutation test on ranks "
    "(Gehan's test for data censored at one time) instead of Welch's t, so no CI or Hedges' g is given; `reached_*` count the seeds that got "
    "there; its `mdd` is not the t-based one (which does not describe a rank test): none is given, or `none "
    "detectable` where no ranking of these seeds (every seed of one side before every seed of the other) could "
    "make the claim Supported under Holm's step-down given the other claims' p-values (the k-th smallest p is "
    "tested at α/(m − k + 1): at most α, for a claim whose every other claim is rejected first). A claim where a "
    "side has one value for every seed (no spread: Welch's t "
    "would leave that side's uncertainty out, infinite with both sides so, p = 0 from 2 seeds) or holds a "
    "placeholder (a diverged run's 100 %, a seed that never reached the target: no measurement, it would inflate "
    "its side's spread) is tested by the same rank test, where the placeholder ranks last, with no CI, no Hedges' g "
    "and no t-based `mdd`, and with a placeholder no mean difference either. The means shown are of each side's "
    "measurements only, with how many runs were placeholders (`k diverged`, `k not reached`; `unmeasured_*` in "
    "claims.csv); a steps-to-target side with a seed that never got there has none (the speed table's medians count "
    "such a seed as infinitely slow). A finished run whose val-error curve has holes (metrics lines lost after a crash, an evaluation "
    "without a finite error; flagged) is left out of steps to target and the AUC; diverged runs are left out of "
    "the oscillation metrics (their lines cover part of a training). Not comparable: the two sides' curves were "
    "evaluated differently (evaluations per epoch or BN recalibration), so no verdict on a curve metric, or their "
    "path efficiencies were measured over different windows.")


def load_claims(path: Path) -> dict:
    """The claims file, checked: ValueError with one line naming the bad entry and what to do for a
    file that does not parse, is not a mapping with a list of claims, or holds a claim without a
    required key, with an unknown metric or direction, or with the id of another claim (a repeated
    claim would be two members of its Holm family, and two rows of claims.csv one id cannot tell
    apart)."""
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path} is not valid YAML{at} ({getattr(exc, 'problem', None) or type(exc).__name__}); "
                         f"fix it (see adarem/results/claims.yaml)") from None
    if spec is None:
        spec = {}
    if not isinstance(spec, dict) or not isinstance(spec.get("claims", []), list):
        raise ValueError(f"{path} must be a mapping with a list under 'claims:' (as adarem/results/claims.yaml), "
                         f"not {type(spec).__name__ if not isinstance(spec, dict) else 'claims: ' + type(spec['claims']).__name__}")
    if not spec.get("claims"):  # an empty file wrote a report with no claims section, and said nothing
        raise ValueError(f"{path} holds no claims; list them under 'claims:' (as adarem/results/claims.yaml), or "
                         f"give --claims '' to test none")
    if not isinstance(spec.get("paper_numbers") or {}, dict):
        raise ValueError(f"{path}: paper_numbers must be a mapping (dataset/model: metric: optimizer: value)")
    seen = set()
    for k, c in enumerate(spec.get("claims", []), 1):
        if not isinstance(c, dict):
            raise ValueError(f"claim {k} in {path} is {c!r}, not a mapping of id, text, metric, subject, baseline, better")
        missing = {"id", "text", "metric", "subject", "baseline", "better"} - set(c)
        if missing:
            raise ValueError(f"claim {c.get('id', k)} in {path} lacks {sorted(missing)}")
        if c["metric"] not in METRICS:
            raise ValueError(f"claim {c['id']}: unknown metric {c['metric']!r}; use one of {sorted(METRICS)}")
        if c["better"] not in ("lower", "higher"):
            raise ValueError(f"claim {c['id']}: better must be lower or higher, not {c['better']!r}")
        if c["id"] in seen:
            raise ValueError(f"claim id {c['id']!r} appears twice in {path}: give each claim its own id (a repeated "
                             f"claim would count twice in its Holm family)")
        seen.add(c["id"])
    return spec


def metric_values(rs: RunSet, runs: pd.DataFrame, metric: str, target: float = math.nan) -> list[float]:
    if metric == "steps_to_target":
        if math.isnan(target):
            return []  # no SGD-momentum baseline in this setting: no target
        return [s for s, _ in steps_to_target(rs, runs, target)]  # inf: never got there
    if metric == "final_top1":
        return [DIVERGED_ERROR if s == "diverged" else v for s, v in zip(runs.status, runs.final_top1)]
    if metric == "val_error_auc":  # NaN (left out) for a finished run whose curve has holes
        aucs = area_under_val_error(rs, runs.run_dir)
        return [DIVERGED_ERROR if s == "diverged" else v if whole else math.nan
                for s, v, whole in zip(runs.status, aucs, eval_curve_complete(runs))]
    if metric in ("flip_fraction", "path_efficiency"):
        # finished runs only: a diverged run's lines cover part of a training (and its blow-up)
        osc = rs.oscillation[rs.oscillation.run_dir.isin(oscillation_runs(runs).run_dir)]
        return osc.groupby("run_dir")[metric].mean().tolist()  # NaN for runs logged before the field
    raise ValueError(metric)


def _measured(raw: list[float], runs: pd.DataFrame, metric: str) -> list[float]:
    """Of ``metric_values(rs, runs, metric)`` (``raw``: NaN where a run has no value), the values
    that measure something: not a diverged run's placeholder error or AUC (``DIVERGED_ERROR``), not
    a seed that never reached the target (inf)."""
    if metric == "steps_to_target":
        return [v for v in raw if math.isfinite(v)]
    if metric in ("final_top1", "val_error_auc"):  # one value per run, in the order of runs
        return [v for st, v in zip(runs.status, raw) if st != "diverged" and not math.isnan(v)]
    return [v for v in raw if not math.isnan(v)]


def _side_mean(measured: list[float], n: int, metric: str) -> float:
    """The mean a claim shows for one side: of its measurements only (``_measured``; a placeholder,
    100 % for a diverged run or the cap for a seed that never got there, is an outcome, and
    averaged in it made this table's mean disagree with the test-error table's: 26.05 against 7.56
    with one of 5 seeds diverged; helper-87). None for steps to target where one of the side's
    ``n`` seeds never got there: the mean of those that did would favour the side that failed more
    often (helper-89); none without measurements, or with an infinite one."""
    if not measured or not all(map(math.isfinite, measured)) or (metric == "steps_to_target" and len(measured) < n):
        return math.nan
    return float(np.mean(measured))


# ---- statistics (pure functions of the per-seed values) ----

def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and are not
    counted in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _var(x: np.ndarray) -> float:
    """Sample variance; exactly 0 for identical values (np.var of [0.2, 0.2, 0.2] is ~1e-33, which
    would turn "no spread" into a huge but finite t)."""
    return 0.0 if np.ptp(x) == 0 else float(x.var(ddof=1))


def _welch(a, b) -> tuple[float, float, float]:
    """(diff, standard error, Welch-Satterthwaite df) of mean(a) - mean(b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = _var(a) / len(a), _var(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else math.inf
    return float(a.mean() - b.mean()), se, df


def pooled_sd(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    nu = len(a) + len(b) - 2
    return math.sqrt(((len(a) - 1) * _var(a) + (len(b) - 1) * _var(b)) / nu)


def welch_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(diff, low, high): mean(a) - mean(b) and its Welch confidence interval."""
    diff, se, df = _welch(a, b)
    if se == 0:  # no spread on either side: no interval (a point would claim certainty)
        return diff, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def hedges_g(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    s = pooled_sd(a, b)
    if s == 0:
        return math.nan
    nu = len(a) + len(b) - 2
    j = math.exp(special.gammaln(nu / 2) - special.gammaln((nu - 1) / 2)) / math.sqrt(nu / 2)
    return float(j * (a.mean() - b.mean()) / s)


def one_sided_p(a, b, alternative: str) -> float:
    """Welch t-test of mean(a) - mean(b) < 0 (alternative "less") or > 0 ("greater")."""
    diff, se, df = _welch(a, b)
    if se == 0:
        if diff == 0:
            return 0.5
        return 0.0 if (diff < 0) == (alternative == "less") else 1.0
    t = diff / se
    return float(stats.t.cdf(t, df) if alternative == "less" else stats.t.sf(t, df))


def rank_test_p(a, b, alternative: str) -> float:
    """One-sided exact permutation test on ranks (Mann-Whitney with ties; with every unreached run
    tied at the worst rank it is Gehan's test for data censored at one common time): the p of
    "a tends to be smaller" ("less") or larger ("greater"). Exact up to 20,000 relabellings,
    else 20,000 seeded random ones."""
    a, b = np.asarray(a, float), np.asarray(b, float)

    def rank_sum(x, y, axis):
        ranks = stats.rankdata(np.concatenate([x, y], axis=axis), axis=axis)
        return ranks[..., : x.shape[axis]].sum(axis=axis)

    res = stats.permutation_test((a, b), rank_sum, permutation_type="independent", alternative=alternative,
                                 n_resamples=20_000, vectorized=True, rng=np.random.default_rng(0))
    return float(res.pvalue)


def rank_test_min_p(n_a: int, n_b: int) -> float:
    """The smallest one-sided p ``rank_test_p`` can give with these seeds: every run of one side
    ranked before every run of the other, 1 / C(n_a + n_b, n_a) relabellings (ties only raise it;
    past 20,000 relabellings it is estimated from 20,000 random ones, at least 1 / 20,001)."""
    total = math.comb(n_a + n_b, n_a)
    return 1 / total if total <= 20_000 else 1 / 20_001


def rank_test_can_support(n_a: int, n_b: int, other_p, alpha: float) -> bool:
    """Whether a rank-tested claim with these seeds could be Supported under Holm's step-down, the
    other claims of its family keeping their p-values ``other_p``: its p at the smallest the test
    can give (``rank_test_min_p``), its Holm-adjusted p below alpha. Holm tests the k-th smallest
    p at alpha/(m - k + 1), so the answer depends on the others: at alpha/m when none of them is
    rejected, at alpha when all of them are."""
    return holm([*other_p, rank_test_min_p(n_a, n_b)])[-1] < alpha


def min_detectable_difference(a, b, alpha: float, power: float = POWER) -> float:
    """(t_{1-alpha,nu} + t_{power,nu}) * s_pooled * sqrt(1/n_a + 1/n_b), nu = n_a + n_b - 2."""
    nu = len(a) + len(b) - 2
    if pooled_sd(a, b) == 0:  # no spread on either side: the t-based power says nothing
        return math.nan
    return float((stats.t.ppf(1 - alpha, nu) + stats.t.ppf(power, nu)) * pooled_sd(a, b)
                 * math.sqrt(1 / len(a) + 1 / len(b)))


def evaluate_claims(rs: RunSet, spec: dict, alpha: float = 0.05, target_offset: float = 1.0) -> pd.DataFrame:
    rows = []
    sel = selected_groups(rs.runs)
    targets = sgd_targets(rs, (target_offset,))
    settings = sorted(set(map(tuple, sel[SETTING].values.tolist()))) if not sel.empty else []
    paper = spec.get("paper_numbers") or {}
    for setting in settings:
        here = sel[(sel.dataset == setting[0]) & (sel.model == setting[1])]
        family = []
        target = targets.get(setting, [math.nan])[0]
        for claim in spec.get("claims", []):
            runs_a, runs_b = here[here.optimizer == claim["subject"]], here[here.optimizer == claim["baseline"]]
            raw_a, raw_b = (metric_values(rs, r, claim["metric"], target) for r in (runs_a, runs_b))
            a, b = [v for v in raw_a if not math.isnan(v)], [v for v in raw_b if not math.isnan(v)]
            censored = claim["metric"] == "steps_to_target"
            reached = (sum(map(math.isfinite, a)), sum(map(math.isfinite, b))) if censored else ("", "")
            # the measurements among the values: not a diverged run's placeholder, not "never got there"
            measured_a, measured_b = _measured(raw_a, runs_a, claim["metric"]), _measured(raw_b, runs_b, claim["metric"])
            # a value that stands for an outcome rather than measuring it: a diverged run's 100 % error
            # (or AUC), a seed that never reached the target, at the cap below
            placeholder = (reached != (len(a), len(b)) if censored else
                           claim["metric"] in ("final_top1", "val_error_auc")
                           and bool((pd.concat([runs_a.status, runs_b.status]) == "diverged").any()))
            if censored and a and b:
                # one common censoring value for both sides, one step past the larger step budget:
                # never getting there ranks after getting there at the very last step
                cap = float(pd.concat([runs_a.budget_steps, runs_b.budget_steps]).max()) + 1
                a, b = [min(v, cap) for v in a], [min(v, cap) for v in b]
            row = {"claim": claim["id"], "metric": claim["metric"], "subject": claim["subject"],
                   "baseline": claim["baseline"], "n_subject": len(a), "n_baseline": len(b),
                   "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "hedges_g": math.nan,
                   "p": math.nan, "p_holm": math.nan, "verdict": "Insufficient data",
                   "dataset": setting[0], "model": setting[1], "text": claim["text"],
                   "subject_mean": _side_mean(measured_a, len(a), claim["metric"]),
                   "baseline_mean": _side_mean(measured_b, len(b), claim["metric"]),
                   "unmeasured_subject": len(a) - len(measured_a), "unmeasured_baseline": len(b) - len(measured_b),
                   "better": claim["better"], "p_opposite": math.nan, "p_opposite_holm": math.nan, "mdd": math.nan,
                   "reached_subject": reached[0], "reached_baseline": reached[1]}
            paper_vals = paper.get(f"{setting[0]}/{setting[1]}", {}).get(claim["metric"], {})
            row["paper_subject"] = paper_vals.get(claim["subject"], "")
            row["paper_baseline"] = paper_vals.get(claim["baseline"], "")
            windows, intervals = set(), set()
            if claim["metric"] in ("flip_fraction", "path_efficiency"):
                osc = oscillation_runs(pd.concat([runs_a, runs_b]))
                # both are means over the recorded steps: other intervals, other points of training
                intervals = set(osc.osc_every) - {""} if "osc_every" in here else set()
                if claim["metric"] == "path_efficiency" and "osc_window" in here:
                    windows = set(osc.osc_window) - {""}
            if censored and math.isnan(target):
                # not too few seeds (n said 0 for sides with runs): no target to reach in this setting
                row["n_subject"], row["n_baseline"] = len(runs_a), len(runs_b)
                row["verdict"] = f"Insufficient data ({no_target_reason(sel, setting)})"
            elif claim["metric"] in CURVE_METRICS and len(runs_a) and len(runs_b) and not same_protocol(runs_a, runs_b):
                row["verdict"] = "Not comparable (evaluated differently)"
            elif len(windows) > 1:  # path efficiency depends on its window by definition
                row["verdict"] = "Not comparable (oscillation windows differ)"
            elif len(intervals) > 1:
                row["verdict"] = "Not comparable (oscillation recorded at different intervals)"
            elif len(a) >= MIN_SEEDS and len(b) >= MIN_SEEDS:
                claimed, opposite = ("less", "greater") if claim["better"] == "lower" else ("greater", "less")
                # no spread on a side: Welch's t ignores that side's uncertainty (infinite with both
                # sides so, p = 0 from 2 seeds; with one, a t on the other side's df alone, p ~ 1e-5
                # from 2 seeds a side 0.0001 apart); a placeholder (a diverged run's 100 %) is no
                # measurement a t-test could use: it inflates the spread and weakens the verdict
                # against the side that diverged. The exact rank test is what these seeds can show,
                # with no CI or Hedges' g (they would describe the t model the test does not use)
                no_spread = _var(np.asarray(a, float)) == 0 or _var(np.asarray(b, float)) == 0
                ranked = censored or no_spread or placeholder
                # a mean difference only of measurements (with a placeholder it would be a number in
                # the metric's units set by the arbitrary 100 % or cap); a CI and Hedges' g only where
                # the t-test gives the p: beside a rank test's p, a Welch interval on discrete steps
                # could exclude 0 next to "Inconclusive" (helper-87)
                row["diff"] = math.nan if placeholder else float(np.mean(a) - np.mean(b))
                if not ranked:
                    row["diff"], row["ci_low"], row["ci_high"] = welch_ci(a, b)
                    row["hedges_g"] = hedges_g(a, b)
                row["ranked"] = ranked
                test = rank_test_p if ranked else one_sided_p
                row["p"], row["p_opposite"] = test(a, b, claimed), test(a, b, opposite)
                family.append((row, a, b))
            rows.append(row)
        m = len(family)
        adjusted = holm([r["p"] for r, _, _ in family])
        adjusted_opp = holm([r["p_opposite"] for r, _, _ in family])
        for k, ((row, a, b), ph, po) in enumerate(zip(family, adjusted, adjusted_opp)):
            row["p_holm"], row["p_opposite_holm"] = ph, po
            if ph < alpha:
                row["verdict"] = "Supported"
            elif po < alpha:
                row["verdict"] = "Contradicted"
            else:
                row["verdict"] = "Inconclusive"
                if row.pop("ranked", False):
                    # rank-tested: the t-based MDD does not describe the rank test's power, so none is
                    # given, unless no ranking of these seeds could make it Supported under Holm's
                    # step-down, the family's other p-values as they are: then no difference, however
                    # large, is detectable (inf, "none detectable")
                    others = [r["p"] for j, (r, _, _) in enumerate(family) if j != k]
                    row["mdd"] = math.nan if rank_test_can_support(len(a), len(b), others, alpha) else math.inf
                else:
                    row["mdd"] = min_detectable_difference(a, b, alpha / m)
    for row in rows:
        row.pop("ranked", None)
    return pd.DataFrame(rows)
