"""The claims' statistics (CI, Hedges' g, p, Holm, verdicts, MDD) against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from adarem.results import CLAIMS_FILE, load_runs, write_report
from adarem.results.claims import (CSV_COLUMNS, evaluate_claims, hedges_g, holm, load_claims,
                                   min_detectable_difference, one_sided_p, rank_test_p, welch_ci)
from adarem.results.tables import oscillation_table
from tests.conftest import REPO
from tests.results.test_tables import make_run


def test_holm_on_a_known_set():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not part of the family (m = 2) and stays NaN; adjusted p never exceeds 1
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


A = [8.0, 9.0, 7.0, 8.5]
B = [11.0, 12.0, 10.0]


def test_welch_ci_hedges_g_and_p_by_hand():
    a, b = np.array(A), np.array(B)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = a.mean() - b.mean()
    d, lo, hi = welch_ci(A, B)
    assert (d, lo, hi) == pytest.approx((diff, diff - half, diff + half))
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)  # scipy's own Welch CI
    assert (lo, hi) == pytest.approx((ci.low, ci.high))

    nu = len(a) + len(b) - 2
    sp = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / nu)
    j = special.gamma(nu / 2) / (math.sqrt(nu / 2) * special.gamma((nu - 1) / 2))
    assert hedges_g(A, B) == pytest.approx(j * diff / sp)
    assert j == pytest.approx(1 - 3 / (4 * nu - 1), abs=0.02)  # the usual approximation, close

    t = diff / math.sqrt(va + vb)
    assert one_sided_p(A, B, "less") == pytest.approx(stats.t.cdf(t, df))
    assert one_sided_p(A, B, "greater") == pytest.approx(stats.t.sf(t, df))
    assert min_detectable_difference(A, B, 0.05 / 3) == pytest.approx(
        (stats.t.ppf(1 - 0.05 / 3, nu) + stats.t.ppf(0.8, nu)) * sp * math.sqrt(1 / len(a) + 1 / len(b)))


def test_zero_variance():
    # no spread on either side: no interval and no t-based MDD (a point CI and an MDD of 0 claimed
    # certainty from 2 seeds); evaluate_claims rank-tests such a claim instead of Welch's t
    diff, lo, hi = welch_ci([2.0, 2.0], [5.0, 5.0, 5.0])
    assert diff == -3.0 and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(hedges_g([2.0, 2.0], [5.0, 5.0]))
    assert one_sided_p([2.0, 2.0], [5.0, 5.0], "less") == 0.0  # Welch's limit, which the claims no longer use
    assert one_sided_p([2.0, 2.0], [5.0, 5.0], "greater") == 1.0
    assert one_sided_p([2.0, 2.0], [2.0, 2.0], "less") == 0.5
    assert math.isnan(min_detectable_difference([2.0, 2.0], [2.0, 2.0], 0.05))
    # one side constant, the other not: an ordinary Welch test
    assert 0 < one_sided_p([2.0, 2.0], [4.0, 6.0], "less") < 0.5


def add_oscillation(run_dir, flips, effs=None):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for i, flip in enumerate(flips):
            rec = {"type": "oscillation", "step": 10 * (i + 1), "flip_fraction": flip, "per_layer": {}}
            if effs is not None:
                rec["path_efficiency"] = effs[i]
            f.write(json.dumps(rec) + "\n")


SPEC = {"claims": [
    {"id": "sup", "text": "t", "metric": "final_top1", "subject": "adarem", "baseline": "sgd", "better": "lower"},
    {"id": "con", "text": "t", "metric": "final_top1", "subject": "adarem", "baseline": "adam", "better": "lower"},
    {"id": "inc", "text": "t", "metric": "final_top1", "subject": "adarem", "baseline": "adamw", "better": "lower"},
    {"id": "few", "text": "t", "metric": "final_top1", "subject": "adarem", "baseline": "sgd_plain", "better": "lower"},
    {"id": "flat", "text": "t", "metric": "flip_fraction", "subject": "adarem", "baseline": "adam", "better": "lower"},
    {"id": "eff", "text": "t", "metric": "path_efficiency", "subject": "adarem", "baseline": "sgd", "better": "higher"},
    {"id": "old", "text": "t", "metric": "path_efficiency", "subject": "adarem", "baseline": "adamw", "better": "higher"},
]}


@pytest.fixture()
def verdict_records(tmp_path):
    root = tmp_path / "runs"
    for s, last in enumerate([8.0, 9.0, 7.0]):
        add_oscillation(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, last]), [0.2, 0.2], [0.6, 0.8])
    for s, last in enumerate([12.0, 13.0, 11.0]):
        add_oscillation(make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, last]), [0.4, 0.4], [0.3, 0.3 + s / 10])
    for s, last in enumerate([4.0, 5.0, 3.0]):  # adam clearly better: the claim is contradicted
        add_oscillation(make_run(root, f"adam{s}", "adam", s, [30.0, 15.0, last]), [0.5, 0.5])
    for s, last in enumerate([5.0, 12.0]):  # adamw: noisy, about the same
        add_oscillation(make_run(root, f"adamw{s}", "adamw", s, [30.0, 15.0, last]), [0.3, 0.3])  # old: no efficiency
    make_run(root, "adamw_div", "adamw", 2, [30.0], status="diverged")  # counts as 100 % error
    make_run(root, "plain0", "sgd_plain", 0, [30.0, 15.0, 10.0])  # one seed only
    return root


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy on the constant [0.7] * 3
def test_verdicts_on_hand_made_records(verdict_records):
    rs = load_runs(verdict_records)
    v = evaluate_claims(rs, SPEC).set_index("claim")
    assert v.loc["sup", "verdict"] == "Supported"
    assert v.loc["con", "verdict"] == "Contradicted"
    assert v.loc["inc", "verdict"] == "Inconclusive"
    assert v.loc["few", "verdict"] == "Insufficient data" and v.loc["few", "n_baseline"] == 1
    assert math.isnan(v.loc["few", "p"]) and math.isnan(v.loc["few", "p_holm"])
    assert v.loc["old", "verdict"] == "Insufficient data" and v.loc["old", "n_baseline"] == 0  # field absent: NaN
    # diverged adamw run = 100 % error in the rank test, left out of the mean shown (and counted)
    assert v.loc["inc", "baseline_mean"] == pytest.approx((5 + 12) / 2) and v.loc["inc", "n_baseline"] == 3
    assert v.loc["inc", "unmeasured_baseline"] == 1 and v.loc["inc", "unmeasured_subject"] == 0

    adarem, sgd, adam, adamw = [8.0, 9.0, 7.0], [12.0, 13.0, 11.0], [4.0, 5.0, 3.0], [5.0, 12.0, 100.0]
    p = {"sup": stats.ttest_ind(adarem, sgd, equal_var=False, alternative="less").pvalue,
         "con": stats.ttest_ind(adarem, adam, equal_var=False, alternative="less").pvalue,
         # a diverged adamw run (100 %, a placeholder, not a measurement): the rank test, where it ranks
         # last; in a t-test it inflated adamw's spread and weakened the verdict against adamw
         "inc": rank_test_p(adarem, adamw, "less"),
         "flat": 1 / 20,  # flips 0.2 vs 0.5, no spread on either side: the exact rank test, 1 / C(6, 3)
         # no spread on adarem's side alone: the rank test too (Welch's t on adam's df alone said 0.006)
         "eff": 1 / 20}
    for k, pk in p.items():
        assert v.loc[k, "p"] == pytest.approx(pk)
    # the family: the five claims tested in this setting (few and old have no test)
    family = list(p)
    expected = dict(zip(family, holm([p[k] for k in family])))
    for k in family:
        assert v.loc[k, "p_holm"] == pytest.approx(expected[k])
    opp = holm([1 - p[k] for k in family])
    assert v.loc["con", "p_opposite_holm"] == pytest.approx(opp[family.index("con")]) and opp[1] < 0.05

    # 3 seeds a side with no spread cannot give p < 0.05 (Welch's infinite t said p = 0, Supported)
    assert v.loc["flat", "verdict"] == "Inconclusive" and v.loc["flat", "diff"] == pytest.approx(-0.3)
    assert math.isnan(v.loc["flat", "ci_low"]) and math.isnan(v.loc["flat", "ci_high"])
    assert math.isnan(v.loc["flat", "hedges_g"])
    assert v.loc["flat", "mdd"] == math.inf  # 1/20 * Holm's factor never clears 0.05: none detectable
    assert v.loc["eff", "verdict"] == "Inconclusive" and v.loc["eff", "diff"] == pytest.approx(0.7 - 0.35)
    for k in ("eff", "inc"):  # rank-tested: no t-based interval, effect size or detectable difference
        assert math.isnan(v.loc[k, "ci_low"]) and math.isnan(v.loc[k, "hedges_g"]) and not v.loc[k, "mdd"] < math.inf
    assert math.isnan(v.loc["inc", "diff"])  # a placeholder: no mean difference (it would be set by the 100 %)
    assert v.loc["sup", "diff"] == pytest.approx(-4.0) and v.loc["sup", "hedges_g"] < 0
    # only an Inconclusive t-tested row states the detectable difference, at level alpha / m (m = 5)
    assert v.loc["sup", "ci_low"] < v.loc["sup", "diff"] < v.loc["sup", "ci_high"]
    assert math.isnan(v.loc["sup", "mdd"]) and math.isnan(v.loc["con", "mdd"])


def test_a_diverged_seed_does_not_weaken_the_verdict_against_its_side(tmp_path):
    """AdaRem worse than AdamW on every seed: Contradicted. One AdaRem seed diverging (100 % error,
    worse still) made the t-test's spread ~40 points and the verdict Inconclusive; the rank test
    ranks it last and the verdict stands."""
    spec = {"claims": [{"id": "lower", "text": "t", "metric": "final_top1", "subject": "adarem",
                        "baseline": "adamw", "better": "lower"}]}
    verdicts = []
    for diverged in (False, True):
        root = tmp_path / f"runs{diverged}"
        for s in range(5):
            make_run(root, f"adamw{s}", "adamw", s, [30.0, 15.0, 7.0 + 0.05 * s])
            if diverged and s == 4:
                make_run(root, f"adarem{s}", "adarem", s, [30.0], status="diverged")
            else:
                make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.05 * s])
        verdicts.append(evaluate_claims(load_runs(root), spec).set_index("claim").loc["lower"])
    assert [v.verdict for v in verdicts] == ["Contradicted", "Contradicted"], verdicts
    assert verdicts[1].p_opposite == pytest.approx(1 / 252)  # every adarem seed after every adamw seed
    assert math.isnan(verdicts[1].ci_low) and math.isnan(verdicts[1].hedges_g)


def test_report_claims_csv_preamble_and_efficiency_column(verdict_records, tmp_path):
    rs = load_runs(verdict_records)
    assert "path_efficiency" in rs.oscillation.columns
    assert rs.oscillation.path_efficiency.isna().sum() == 10  # adam's (3 x 2) and adamw's (2 x 2) predate the field
    osc = oscillation_table(rs).set_index("optimizer")
    assert osc.loc["adarem", "path efficiency"] == "70.00 ± 0.00 %" and osc.loc["adam", "path efficiency"] == "—"

    claims = tmp_path / "claims.yaml"
    claims.write_text(json.dumps(SPEC))
    out = tmp_path / "out"
    text = write_report(rs, out, claims, "cmd", preamble="## Provenance\n\n- made by hand\n")
    assert text.index("# Results") < text.index("## Provenance") < text.index("## Test error")
    assert "Holm" in text and "Hedges' g" in text and "mdd" in text
    assert "family of all claims tested in the same setting" in text
    csv = pd.read_csv(out / "claims.csv")
    assert list(csv.columns) == CSV_COLUMNS
    assert list(csv.columns[:13]) == ["claim", "metric", "subject", "baseline", "n_subject", "n_baseline", "diff",
                                      "ci_low", "ci_high", "hedges_g", "p", "p_holm", "verdict"]
    assert set(csv.verdict) == {"Supported", "Contradicted", "Inconclusive", "Insufficient data"}
    # positional call of the old signature still works, without a preamble
    text = write_report(rs, tmp_path / "o2", None, "cmd", (1.0, 5.0))
    assert "## Provenance" not in text


def test_repository_claims_compare_like_with_like():
    spec = load_claims(CLAIMS_FILE)
    osc = [c for c in spec["claims"] if c["metric"] in ("flip_fraction", "path_efficiency")]
    pairs = {(c["subject"], c["baseline"], c["metric"]) for c in osc}
    assert pairs == {("adarem", "sgd_plain", "flip_fraction"), ("adarem", "sgd_plain", "path_efficiency"),
                     ("adarem_m", "sgd", "flip_fraction"), ("adarem_m", "sgd", "path_efficiency")}
    assert all(c["better"] == ("higher" if c["metric"] == "path_efficiency" else "lower") for c in osc)
    preset = (REPO / "configs" / "optimizer" / "sgd_plain.yaml").read_text()
    assert "variant: sgd_plain" in preset and "momentum: 0.0" in preset and "name: sgd" in preset


def test_rank_test_is_exact_and_sees_censoring():
    from adarem.results.claims import rank_test_p

    # 3 vs 3: 20 equally likely relabellings, one of which puts every subject value first
    assert rank_test_p([1, 2, 3], [4, 5, 6], "less") == pytest.approx(1 / 20)
    assert rank_test_p([1, 2, 3], [4, 5, 6], "greater") == pytest.approx(1.0)
    assert rank_test_p([90, 90, 90], [4, 5, 6], "greater") == pytest.approx(1 / 20)  # never reached = worst


def test_faster_claim_needs_the_subject_to_get_there(tmp_path):
    """The subject never reaches the target, though it starts lower: not Supported; the reached
    counts are in claims.csv. (A subject on a shorter budget, where censoring at its own budget
    made it look fast, is now another setting and never paired: test_tables.py.)"""
    root = tmp_path / "runs"
    for s in range(5):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"adam{s}", "adam", s, [40.0, 20.0, 10.5 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 25.0, 25.0 + 0.1 * s])
    v = evaluate_claims(load_runs(root), load_claims(CLAIMS_FILE)).set_index("claim")
    faster = v.loc["faster_than_adam"]
    assert faster.reached_subject == 0 and faster.reached_baseline == 5
    assert faster.verdict == "Contradicted", faster.to_dict()


def test_a_diverged_seed_is_left_out_of_the_means_and_a_rank_tested_row_has_no_welch_interval(tmp_path):
    """helper-87: with one AdaRem seed of 5 diverged, the claims table said adarem (26.05, 5) and a
    diff of 18.84 while the test-error table said 7.56 (4 of 5); and a steps-to-target row printed a
    Welch CI on steps beside the rank test's p (one excluded 0 next to "Inconclusive")."""
    spec = {"claims": [{"id": "lower", "text": "t", "metric": "final_top1", "subject": "adarem",
                        "baseline": "adamw", "better": "lower"},
                       {"id": "faster", "text": "t", "metric": "steps_to_target", "subject": "adarem",
                        "baseline": "adamw", "better": "lower"}]}
    root = tmp_path / "runs"
    for s in range(5):
        make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 10.0 + 0.1 * s])
        make_run(root, f"adamw{s}", "adamw", s, [30.0, 20.0, 9.0 + 0.05 * s])
        if s == 4:
            make_run(root, f"adarem{s}", "adarem", s, [30.0], status="diverged")
        else:
            make_run(root, f"adarem{s}", "adarem", s, [30.0, 10.5, 8.0 + 0.05 * s])
    rs = load_runs(root)
    v = evaluate_claims(rs, spec).set_index("claim")
    assert v.loc["lower", "subject_mean"] == pytest.approx(np.mean([8.0, 8.05, 8.1, 8.15]))
    assert v.loc["lower", "unmeasured_subject"] == 1 and math.isnan(v.loc["lower", "diff"])
    assert v.loc["faster", "reached_subject"] == 4 and v.loc["faster", "unmeasured_subject"] == 1
    assert math.isnan(v.loc["faster", "subject_mean"])  # no mean of the 4 that got there: it would flatter the side
    for k in ("lower", "faster"):
        assert math.isnan(v.loc[k, "ci_low"]) and math.isnan(v.loc[k, "ci_high"]) and math.isnan(v.loc[k, "hedges_g"])
    out = tmp_path / "out"
    claims = tmp_path / "claims.yaml"
    claims.write_text(json.dumps(spec))
    text = write_report(rs, out, claims, "cmd")
    (lower,) = [ln for ln in text.splitlines() if ln.startswith("| lower ")]
    assert "adarem (8.075, 5; 1 diverged)" in lower and "— (rank test; placeholders ranked last)" in lower, lower
    (faster,) = [ln for ln in text.split("### Steps-to-target")[0].splitlines() if ln.startswith("| faster ")]
    assert "adarem (—, 5; 1 not reached)" in faster, faster
    # every seed reached the target on both sides: a mean difference, still no Welch interval
    root2 = tmp_path / "runs2"
    for s in range(3):
        make_run(root2, f"sgd{s}", "sgd", s, [30.0, 15.0, 10.0 + 0.1 * s])
        make_run(root2, f"adamw{s}", "adamw", s, [30.0, 20.0 + s, 9.0])
        make_run(root2, f"adarem{s}", "adarem", s, [10.0 + 0.5 * s, 10.5, 8.0])
    f = evaluate_claims(load_runs(root2), spec).set_index("claim").loc["faster"]
    assert f["diff"] == pytest.approx(10.0 - 30.0) and math.isnan(f.ci_low) and math.isnan(f.hedges_g)
