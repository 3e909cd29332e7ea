"""Write every table (Markdown, LaTeX, CSV), the claims verdicts and the plots of a run set."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import pandas as pd

from adarem.fsync import staging_folder
from adarem.results.claims import CSV_COLUMNS, STATISTICS_TEXT, evaluate_claims, load_claims, rank_test_min_p
from adarem.results.owner import REPORT_OWNER
from adarem.results.plots import plot_curves
from adarem.results.records import RunSet
from adarem.results.tables import (HOLDOUT, MIN_NOTE, SETTING, coarser_grid, error_table, fmt_number, holdout_runs,
                                   holdout_table, oscillation_notes, oscillation_runs, oscillation_table,
                                   selection_notes, speed_table, timing_notes, train_loss_notes)

# What write_report writes into its output directory, and so owns there: a file of these names
# that a run did not regenerate is another run set's, and is removed (tables.md is always written;
# selection.csv, plots/selection_lr.png (compare.py's), README.md and anything else are never touched)
TABLE_NAMES = ("test_error", "speed", "oscillation", "holdout_error")
# REPORT_OWNER, compare.py's record of whose report a folder holds: a report of make_tables.py
# written there after it removes it, as it is no longer that comparison's
OWNED_FILES = tuple(f"{n}.{ext}" for n in TABLE_NAMES for ext in ("csv", "tex")) + ("claims.csv", REPORT_OWNER)
OWNED_PLOTS = ("curves_*.png", "oscillation_*.png")  # in plots/, as plots.plot_curves names them


def _fmt_p(p) -> str:
    return "—" if pd.isna(p) else f"{p:.3g}"


def _side(name, mean, n, unmeasured, metric) -> str:
    """``adarem (7.4, 5)``: the mean of a side's measurements and its seeds; with placeholders, how
    many: ``adarem (7.56, 5; 1 diverged)``, ``adarem (1685, 5; 1 not reached)`` (the mean is of
    the others), ``adarem (—, 3; 3 not reached)``, never a mean that averages a placeholder in."""
    try:
        k = int(unmeasured)
    except (TypeError, ValueError):
        k = 0
    what = "not reached" if metric == "steps_to_target" else "diverged"
    return f"{name} ({fmt_number(mean)}, {n}" + (f"; {k} {what}" if k > 0 else "") + ")"


def _diff(d, lo, hi, unmeasured, p) -> str:
    if pd.isna(d):
        return "— (rank test; placeholders ranked last)" if unmeasured and not pd.isna(p) else "—"
    return f"{fmt_number(d)} (rank test: no CI)" if pd.isna(lo) else f"{fmt_number(d)} [{fmt_number(lo)}, {fmt_number(hi)}]"


def claims_markdown(verdicts: pd.DataFrame, alpha: float = 0.05) -> str:
    """The claims section: the statistics in two sentences, then one row per claim and setting."""
    show = pd.DataFrame({
        "claim": verdicts.claim, "dataset": verdicts.dataset, "model": verdicts.model, "metric": verdicts.metric,
        "better": verdicts.better,
        "subject (mean, n)": [_side(*v) for v in zip(verdicts.subject, verdicts.subject_mean, verdicts.n_subject,
                                                     verdicts.unmeasured_subject, verdicts.metric)],
        "baseline (mean, n)": [_side(*v) for v in zip(verdicts.baseline, verdicts.baseline_mean, verdicts.n_baseline,
                                                      verdicts.unmeasured_baseline, verdicts.metric)],
        "diff [95 % CI]": [_diff(d, lo, hi, bool(ua) or bool(ub), p) for d, lo, hi, ua, ub, p in zip(
            verdicts["diff"], verdicts.ci_low, verdicts.ci_high, verdicts.unmeasured_subject,
            verdicts.unmeasured_baseline, verdicts.p)],
        "Hedges' g": verdicts.hedges_g.map(lambda g: "—" if pd.isna(g) else f"{g:.2f}"),
        "p": verdicts.p.map(_fmt_p), "p (Holm)": verdicts.p_holm.map(_fmt_p),
        "p opposite (Holm)": verdicts.p_opposite_holm.map(_fmt_p),
        "verdict": verdicts.verdict,
        "mdd": verdicts.mdd.map(lambda x: "none detectable" if x == float("inf") else fmt_number(x)),
    })
    if (verdicts.paper_subject.astype(str) != "").any():
        show["paper subject"], show["paper baseline"] = verdicts.paper_subject, verdicts.paper_baseline
    return ("## Claims of the paper\n\n" + STATISTICS_TEXT.format(alpha=alpha, alpha2=2 * alpha) + "\n\n"
            + show.to_markdown(index=False) + "\n")


def other_targets_markdown(rs: RunSet, spec: dict, verdicts: pd.DataFrame, offsets) -> str:
    """The steps-to-target claims' verdicts at every target of the speed table, each a whole
    evaluation of the family at that target: a verdict that holds at SGD + 1 point and not at
    + 5 describes when in training one optimizer is ahead, not that it is faster. Empty where the
    claims have no steps-to-target claim or there is one target."""
    steps = verdicts[verdicts.metric == "steps_to_target"]
    if len(offsets) < 2 or steps.empty:
        return ""
    by_offset = {offsets[0]: verdicts}
    for off in offsets[1:]:
        by_offset[off] = evaluate_claims(rs, spec, target_offset=off)
    key = ["claim", "dataset", "model"]
    show = steps[key].copy()
    for off, v in by_offset.items():
        v = v.set_index(key)
        show[f"SGD+{off:g}"] = [f"{v.loc[tuple(k), 'verdict']} ({_fmt_p(v.loc[tuple(k), 'p_holm'])})"
                                for k in steps[key].itertuples(index=False)]
    return ("### Steps-to-target claims at each target\n\nThe verdicts above are at the first target, SGD + "
            f"{offsets[0]:g} point{'' if offsets[0] == 1 else 's'}. At each target of the speed table (`--targets`), the same claims, the whole "
            "family tested again at that target (verdict, Holm-adjusted p): a verdict that holds at one target and "
            "not another says when in training one optimizer is ahead, not that it is faster throughout.\n\n"
            + show.to_markdown(index=False) + "\n")


OSCILLATION_METRICS = ("flip_fraction", "path_efficiency")


def matched_lr_markdown(rs: RunSet, spec: dict) -> str:
    """The oscillation claims at each learning rate both sides were searched at, from the lr
    search's selection trials (holdout runs; they log the same oscillation lines). The claims
    compare each optimizer at its own selected lr, and both metrics move with the lr by more than
    the claimed effects (on the committed study adarem_m's flips go from 12.4 % at lr 0.1 to 7-9 %
    at 0.316; helper-87): a direction that holds at every shared lr is about the optimizer, one
    that does not may be about the lrs chosen. Descriptive (no test: the selection trials have 2
    seeds); empty without such claims or shared lrs."""
    claims = [c for c in spec.get("claims", []) if c["metric"] in OSCILLATION_METRICS]
    trials = oscillation_runs(holdout_runs(rs.runs)) if not rs.runs.empty and "eval_on" in rs.runs else rs.runs
    if not claims or trials.empty or rs.oscillation.empty:
        return ""
    per_run = rs.oscillation.groupby("run_dir")[list(OSCILLATION_METRICS)].mean()
    trials = trials.join(per_run, on="run_dir")
    rows = []
    if "osc_every" not in trials:
        trials = trials.assign(osc_every="")
    several = trials.groupby(SETTING).osc_every.nunique()
    for c in claims:
        # trials recorded at other intervals average other points of training: never paired
        for (dataset, model, every), g in trials.groupby([*SETTING, "osc_every"]):
            where = f"{dataset} (every {every})" if several[(dataset, model)] > 1 else dataset
            sub, base = g[g.optimizer == c["subject"]], g[g.optimizer == c["baseline"]]
            # each side at one (lr, weight decay) of its search: a search over both (search=lr_wd)
            # tries several weight decays per lr, which a mean over the lr alone would mix (helper-89)
            for lr in sorted(set(sub.lr) & set(base.lr)):
                for wd_a in sorted(set(sub[sub.lr == lr].weight_decay)):
                    for wd_b in sorted(set(base[base.lr == lr].weight_decay)):
                        a = sub[(sub.lr == lr) & (sub.weight_decay == wd_a)][c["metric"]].dropna()
                        b = base[(base.lr == lr) & (base.weight_decay == wd_b)][c["metric"]].dropna()
                        if a.empty or b.empty:
                            continue
                        diff = a.mean() - b.mean()
                        holds = "tie" if diff == 0 else "yes" if (diff < 0) == (c["better"] == "lower") else "no"
                        rows.append({"claim": c["id"], "dataset": where, "model": model, "lr": f"{lr:.3g}",
                                     "subject (wd; mean, n)": f"{c['subject']} ({wd_a:g}; {100 * a.mean():.2f} %, {len(a)})",
                                     "baseline (wd; mean, n)": f"{c['baseline']} ({wd_b:g}; {100 * b.mean():.2f} %, {len(b)})",
                                     "claimed direction": holds})
    if not rows:
        return ""
    return ("### Oscillation claims at shared learning rates\n\nThe oscillation claims compare each optimizer at "
            "its own selected learning rate, and both measures move with the learning rate. The lr search's selection "
            "trials (holdout split; their own seeds) at every learning rate both sides were searched at: whether the "
            "claimed direction holds there too (mean over the trials; descriptive, no test).\n\n"
            + pd.DataFrame(rows).to_markdown(index=False) + "\n")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def evaluation_grid_markdown(rs: RunSet, spec: dict, verdicts: pd.DataFrame, offset: float) -> str:
    """The steps-to-target claims' verdicts with the same runs' curves sampled more coarsely
    (``tables.coarser_grid``: every 2nd, 4th, ... evaluation), the whole family tested again each
    time, and whether each p sits at the smallest the rank test can give with these seeds. A
    steps-to-target verdict read off a noisy curve can depend on how often it was sampled (on the
    committed study one flipped from Supported at 4 evaluations an epoch to Inconclusive at 2;
    helper-87): this table says so beside it. Empty where there is no such claim or no coarser grid."""
    steps = verdicts[(verdicts.metric == "steps_to_target") & verdicts.p.notna()]
    finals = rs.runs[rs.runs.eval_on != HOLDOUT] if "eval_on" in rs.runs else rs.runs
    if steps.empty or finals.empty or "evals_per_epoch" not in finals:
        return ""
    grids = sorted(set(finals.evals_per_epoch.dropna().astype(int)))
    # the coarser grids every final run can be thinned to (settings evaluated 4 and 1 times an epoch:
    # the first thinned to 1, the second as it is)
    coarser = [k for k in range(max(grids) - 1, 0, -1) if all(e % k == 0 for e in grids)] if grids else []
    if not coarser:
        return ""
    as_run = "/".join(map(str, grids))
    key = ["claim", "dataset", "model"]
    show = steps[key].copy()
    show["smallest p possible (raw)"] = [_fmt_p(rank_test_min_p(int(a), int(b)))
                                         for a, b in zip(steps.n_subject, steps.n_baseline)]
    show[f"{as_run}/epoch (as run)"] = [
        f"{v} ({_fmt_p(ph)}{', p at the floor' if p <= rank_test_min_p(int(a), int(b)) * (1 + 1e-9) else ''})"
        for v, ph, p, a, b in zip(steps.verdict, steps.p_holm, steps.p, steps.n_subject, steps.n_baseline)]
    for k in coarser:
        v = evaluate_claims(coarser_grid(rs, k), spec, target_offset=offset).set_index(key)
        show[f"{k}/epoch"] = [f"{v.loc[tuple(r), 'verdict']} ({_fmt_p(v.loc[tuple(r), 'p_holm'])})"
                              for r in steps[key].itertuples(index=False)]
    return ("### Steps-to-target claims on coarser evaluation grids\n\nSteps to target are read off the val-error "
            f"curve at its evaluations, {as_run} an epoch here. The same runs' curves, keeping every "
            f"{' or '.join(_ordinal(max(grids) // k) for k in coarser)} evaluation (those a run evaluated fewer times an "
            f"epoch would have made; training does not depend on them), at the first target (SGD + {offset:g}), "
            "the whole family tested again (verdict, Holm-adjusted p). A verdict that changes with the grid rests on "
            "where a noisy curve happened to be sampled. `p at the floor`: every seed of one side reached the target "
            "before every seed of the other, so the raw p is the smallest the rank test can give with these seeds "
            "(`smallest p possible`, before Holm's adjustment; the verdict cells show the adjusted p); one tie or swap "
            "raises it.\n\n" + show.to_markdown(index=False) + "\n")


def speed_note(rs: RunSet, offsets) -> str:
    """What the speed table measures, and how its runs were evaluated, in a few sentences: of the
    runs the table holds (on the val/test split), never of the lr search's holdout runs."""
    runs = rs.runs[rs.runs.eval_on != HOLDOUT] if not rs.runs.empty and "eval_on" in rs.runs else rs.runs
    per_epoch = sorted(set(runs.evals_per_epoch.dropna().astype(int))) if "evals_per_epoch" in runs else [1]
    # trainer.eval_every=k: at every k-th epoch's end and the last (helper-92: "1 per epoch" was said)
    every = sorted(set(runs.eval_every.dropna().astype(int))) if "eval_every" in runs else [1]
    grid = " / ".join([f"{'/'.join(map(str, per_epoch))} per epoch"] * (1 in every)
                      + [f"at every {_ordinal(k)} epoch's end and the last" for k in every if k > 1])
    recal = sorted(set(runs.bn_recalibrate.dropna().astype(int))) if "bn_recalibrate" in runs else [0]
    bn = ("BatchNorm statistics (where the model has BatchNorm layers) recomputed on " + "/".join(map(str, recal))
          + " training batches before each evaluation" if recal != [0]
          else "BatchNorm running averages (no recalibration)") if recal else ""
    paths = ("; ".join(f"{opt} {'/'.join(sorted(set(impl)))}" for opt, impl in runs.groupby("optimizer").optimizer_impl)
             if "optimizer_impl" in runs and len(runs) else "")
    return (f"Target = the selected SGD-momentum configuration's median final val error + "
            f"{', '.join(f'{o:g}' for o in offsets)} points. Steps (and training seconds, comparable only on "
            f"the same dedicated hardware; they include one-time compilation where a path is compiled, as AdaRem's fused one is) to the first evaluation at or below the target: median over seeds, "
            f"with how many seeds reached it. Speed-up over a baseline = median baseline steps / median steps "
            f"(> 1: faster), at the first target, with a percentile bootstrap 95 % CI over seeds (10,000 "
            f"resamples, seeded; none below 3 seeds a side); a seed that never reaches the target, or "
            f"diverged, counts as infinitely slow, and a run whose curve has holes (see flags) is left out; rows "
            f"evaluated differently are not compared. Evaluations: "
            f"{grid}, with {bn}. Train loss @x % is the mean loss of the "
            f"logging windows that end in the 10 % of the step budget before x % (none where no window ends "
            f"there), over finished runs (a diverged run stopped early). The "
            f"val-err AUC (mean val error over the evaluations; none for a run whose evaluations are not "
            f"evenly spaced) is secondary: it also rewards the first epochs."
            + (f" Optimizer paths (run.json's optimizer_impl): {paths}." if paths else "") + "\n\n")


def _n_runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def _code_versions(runs: pd.DataFrame) -> list[tuple[str, bool, int]]:
    if runs.empty or "commit" not in runs:
        return []
    counts = runs.groupby(["commit", "dirty"]).size()
    return [(c, bool(d), int(n)) for (c, d), n in counts.sort_values(ascending=False).items()]


def code_line(runs: pd.DataFrame) -> str:
    """Which code trained the runs (run.json's git): a comparison relaunched after a change reuses
    its finished runs, so the report's own commit need not be theirs."""
    versions = _code_versions(runs)
    if not versions:
        return ""

    def version(c, d, n):
        what = "git not recorded" if c == "unrecorded" else f"commit {c}{' with uncommitted changes' if d else ''}"
        return f"{what} ({_n_runs(n)})"

    return "Trained at: " + "; ".join(version(*v) for v in versions) + ".\n"


def code_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag when the runs were trained by more than one version of the code, or by code with
    uncommitted changes: a difference between optimizers may then be a difference between codes."""
    versions = _code_versions(runs)
    if not versions:
        return []
    notes = []
    commits = {c for c, _, _ in versions} - {"unrecorded"}
    if len(commits) > 1:
        notes.append({"run_dir": "(code)", "problem": f"runs trained at {len(commits)} commits "
                      f"(see 'Trained at'): a difference between optimizers may be a difference between code "
                      f"versions; rerun the comparison into a fresh runs folder to compare one version"})
    dirty = sum(n for _, d, n in versions if d)
    if dirty:
        notes.append({"run_dir": "(code)", "problem": f"{dirty} run(s) trained with uncommitted changes: no commit "
                      f"names the code that trained them"})
    return notes


def segment_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag per run that was resumed on other code, versions, threads or devices than it started
    on (run.json's mixed_provenance): one run's numbers then come from more than one setup, and
    its row of 'Trained at' names only its last. Records from before segments were kept cannot say."""
    if runs.empty or "mixed_provenance" not in runs:
        return []
    mixed = runs[runs.mixed_provenance.notna() & (runs.mixed_provenance.astype(str) != "")]
    notes = []
    for r in mixed.itertuples():
        keys = [k.strip() for k in str(r.mixed_provenance).split(",") if k.strip() != "unrecorded"]
        what = ([f"resumed with other {', '.join(keys)} than it started with"] if keys else []) + \
            (["continued from a checkpoint that records no code, versions or hardware"]
             if "unrecorded" in str(r.mixed_provenance) else [])
        notes.append({"run_dir": r.run_dir, "problem": f"{'; '.join(what)} (run.json segments): its numbers may "
                      f"come from more than one setup; rerun it in one piece for a clean comparison"})
    return notes


def truncation_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag per kind of truncated schedule (run.json's schedule_truncated: a smoke run of a longer
    recipe): its numbers are the recipe's first epochs, not the recipe's."""
    if runs.empty or "schedule_truncated" not in runs:
        return []
    cut = runs[runs.schedule_truncated.astype(bool)]
    return [{"run_dir": f"(schedule) {_n_runs(len(g))} of {', '.join(sorted(set(g.optimizer)))}",
             "problem": note} for note, g in cut.groupby("schedule_truncated")]


def corrupt_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag per optimizer whose runs trained on replacements for unreadable training images
    (data.on_corrupt=skip): another training set than the one named, by that many images."""
    if runs.empty or "corrupt_skipped" not in runs:
        return []
    hit = runs[runs.corrupt_skipped > 0]
    return [{"run_dir": f"(data) {_n_runs(len(g))} of {opt}",
             "problem": f"trained with {'' if g.corrupt_exact.all() else 'at least '}{int(g.corrupt_skipped.sum())} "
                        f"replacement(s) for unreadable training images (data.on_corrupt=skip; run.json "
                        f"corrupt_skipped): repair the files for a clean comparison"}
            for opt, g in hit.groupby("optimizer")]


def torch_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag when the runs were trained with more than one torch version (run.json's versions):
    kernels and their rounding change between versions, so a difference between optimizers may
    be one between versions."""
    if runs.empty or "torch" not in runs:
        return []
    recorded = runs[runs.torch != "unrecorded"]
    if recorded.torch.nunique() < 2:
        return []
    per = recorded.groupby("torch").optimizer.agg(lambda o: f"{_n_runs(len(o))}: {', '.join(sorted(set(o)))}")
    return [{"run_dir": "(versions)", "problem": f"runs trained with {len(per)} torch versions ("
             + "; ".join(f"torch {v}, {what}" for v, what in per.items()) + "): a difference between optimizers may "
             "be a difference between versions"}]


def divergence_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag per optimizer with diverged runs: where its numbers count them and where not."""
    if runs.empty:
        return []
    div = runs[runs.status == "diverged"]
    notes = []
    for (search, opt), g in div.groupby([div.eval_on == HOLDOUT, "optimizer"]):
        at = ", ".join(f"seed {s} at step {int(x)}" if pd.notna(x) else f"seed {s}"
                       for s, x in sorted(zip(g.seed, g.diverged_at_step), key=lambda t: str(t[0])))
        if search:  # the lr search's selection trials: only in the holdout table
            notes.append({"run_dir": f"(diverged) {_n_runs(len(g))} of {opt} (lr search trials, holdout split)",
                          "problem": f"diverged ({at}): counted as diverged in the selection trials' holdout table; "
                                     f"not part of the test-error, speed or oscillation tables or the claims"})
            continue
        notes.append({"run_dir": f"(diverged) {_n_runs(len(g))} of {opt}",
                      "problem": f"diverged ({at}): counted as diverged in the test-error and speed tables (never "
                                 f"reaching a target; 100 % error in the claims, ranked last); left out of train "
                                 f"loss @x %, the val-err AUC of the speed table, the oscillation table and the "
                                 f"oscillation claims, which its partial history would distort"})
    return notes


def curve_gap_notes(runs: pd.DataFrame) -> list[dict]:
    """A flag per run whose curves have holes (records.load_runs' curve_gap): what is left out."""
    if runs.empty or "curve_gap" not in runs:
        return []
    notes = []
    for r in runs[runs.curve_gap.fillna("") != ""].itertuples():
        lost = getattr(r, "lines_lost", 0) > 0
        notes.append({"run_dir": r.run_dir, "problem": f"{r.curve_gap}: its final error is kept; its curve has "
                      f"holes, so it is left out of best error, steps and seconds to target, speed-ups, val-err AUC "
                      f"and the claims on them" + (", and of train loss @x % and the oscillation table and claims"
                                                   if lost else "")})
    if "osc_gap" in runs:
        for r in runs[runs.osc_gap.fillna("") != ""].itertuples():
            notes.append({"run_dir": r.run_dir, "problem": f"{r.osc_gap}: left out of the oscillation table and "
                          f"claims (a mean over its other lines would describe part of its training)"})
    return notes


def remove_stale(out_dir: Path, written: set[Path]) -> list[Path]:
    """Remove the files of OWNED_FILES / OWNED_PLOTS in out_dir that this report did not write (a
    previous report's, on other runs); returns them."""
    owned = [out_dir / n for n in OWNED_FILES]
    owned += [p for pattern in OWNED_PLOTS for p in sorted((out_dir / "plots").glob(pattern))]
    stale = [p for p in owned if p.is_file() and p.resolve() not in {w.resolve() for w in written}]
    for p in stale:
        p.unlink()
    return stale


# moved into place last: their presence says the rest of the report is there
_LAST = ("selection.csv", "tables.md")


@contextlib.contextmanager
def staged_output(out_dir: Path, before_move=None):
    """Yield a fresh directory in a hidden sibling of ``out_dir`` (a staging folder of
    ``adarem.fsync.staging_folder``) to write a report into; once the block ends without an error,
    move every file of it into ``out_dir`` (tables.md and selection.csv last) and remove the OWNED
    files there that it did not hold. A report that fails midway (a full disk, a plot that raises)
    leaves ``out_dir`` as it was: never new tables beside an old tables.md. The staging folder holds
    a marker naming this process, so that the next report into ``out_dir`` removes it if this one is
    killed (``adarem.fsync.remove_dead_stagings``, run first), and nothing is moved once it is no longer ours.
    ``before_move(out_dir)``, called with the folder locked just before the move, may raise to leave
    ``out_dir`` as it is (compare.py: another comparison's report landed there meanwhile)."""
    out_dir = Path(out_dir)
    with staging_folder(out_dir) as stage:
        staging = stage.content
        yield staging
        stage.check_ours()
        files = sorted((p for p in staging.rglob("*") if p.is_file()),
                       key=lambda p: (p.relative_to(staging).as_posix() in _LAST, p.as_posix()))
        out_dir.mkdir(parents=True, exist_ok=True)
        with _moving_into(out_dir):
            if before_move is not None:
                before_move(out_dir)
            moved = set()
            for src in files:
                dst = out_dir / src.relative_to(staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.add(dst)
            remove_stale(out_dir, moved)


@contextlib.contextmanager
def _moving_into(out_dir: Path):
    """An exclusive flock on ``out_dir`` itself (no lock file left beside the report) while a
    report's files are moved in: two reports that finish at once (two compare.py into one out=)
    land one after the other, never one's tables.md beside the other's CSVs and plots."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_report(rs: RunSet, out_dir: Path, claims_path: Path | None, command: str, offsets=(1.0, 5.0),
                 preamble: str = "") -> str:
    """tables.md (+ CSV, LaTeX, plots) in out_dir; ``preamble`` (Markdown) goes right after the
    title line, before the tables. All of it is written aside and moved in once complete
    (``staged_output``); every file of OWNED_FILES / OWNED_PLOTS there that this report does not
    write (a table without rows, claims without a claims file, a setting no longer in the runs) is
    removed: what lies beside tables.md is always this report's. A caller that stages more files
    with the report (compare.py) calls ``write_report_into`` inside its own ``staged_output``."""
    with staged_output(out_dir) as staging:
        return write_report_into(rs, staging, claims_path, command, offsets, preamble)


def write_report_into(rs: RunSet, out_dir: Path, claims_path: Path | None, command: str, offsets=(1.0, 5.0),
                      preamble: str = "", trials: RunSet | None = None) -> str:
    """What ``write_report`` writes, written straight into ``out_dir``: a staging folder of
    ``staged_output``, which moves it into place and removes the stale OWNED files. ``trials``:
    the lr search's selection trials, where ``rs`` holds the finals alone (compare.py's report),
    for the oscillation claims at shared learning rates; by default ``rs``'s own holdout runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "test_error": error_table(rs),
        "speed": speed_table(rs, offsets),
        "oscillation": oscillation_table(rs),
        "holdout_error": holdout_table(rs),
    }
    parts = [f"# Results\n\nGenerated by `{command}` from {len(rs.runs)} complete runs.\n" + code_line(rs.runs)]
    if preamble:
        parts.append(preamble.strip("\n") + "\n")
    titles = {"test_error": "Test error (%, mean ± std over seeds)",
              "speed": "Training speed: steps to a target val error, AlgoPerf style",
              "oscillation": "Oscillation: update sign flips between consecutive steps, and path efficiency "
                             "(|net move| / path length per weight over a window; 100 % = straight)",
              "holdout_error": "Selection trials of the lr search: holdout error (%, mean ± std over seeds; not test "
                               "results)"}
    notes = {"test_error": MIN_NOTE + (" Runs on the val/test split only: the lr search's selection trials "
                                       "(data.eval_on=holdout) are in their own table below." if not holdout_table(rs).empty
                                       else "") + "\n\n",
             "speed": speed_note(rs, offsets),
             "holdout_error": "The lr search's runs (data.eval_on=holdout): trained on the training set less a "
                              "holdout part and evaluated on that part, to choose each optimizer's learning rate. "
                              "They are not test results and enter no other table, target or claim.\n\n"}
    for name, df in tables.items():
        if df.empty:
            continue
        df.to_csv(out_dir / f"{name}.csv", index=False)
        (out_dir / f"{name}.tex").write_text(df.to_latex(index=False, escape=True, column_format="l" * len(df.columns))
                                             .replace("\\toprule", "\\toprule").replace("\\midrule", "\\midrule"))
        parts.append(f"## {titles[name]}\n\n{notes.get(name, '')}{df.to_markdown(index=False)}\n")
    if claims_path is not None:
        spec = load_claims(claims_path)
        verdicts = evaluate_claims(rs, spec, target_offset=offsets[0])
        if not verdicts.empty:
            verdicts[CSV_COLUMNS].to_csv(out_dir / "claims.csv", index=False)
            parts.append(claims_markdown(verdicts))
            other = other_targets_markdown(rs, spec, verdicts, offsets)
            if other:
                parts.append(other)
            grid = evaluation_grid_markdown(rs, spec, verdicts, offsets[0])
            if grid:
                parts.append(grid)
            matched = matched_lr_markdown(trials if trials is not None else rs, spec)
            if matched:
                parts.append(matched)
    notes = (selection_notes(rs.runs) + code_notes(rs.runs) + segment_notes(rs.runs) + torch_notes(rs.runs)
             + truncation_notes(rs.runs)
             + corrupt_notes(rs.runs) + divergence_notes(rs.runs) + curve_gap_notes(rs.runs) + timing_notes(rs.runs)
             + train_loss_notes(rs.runs)
             + oscillation_notes(rs.runs))
    problems = pd.concat([rs.problems_frame, pd.DataFrame(notes, columns=["run_dir", "problem"])], ignore_index=True)
    parts.append("## Excluded or flagged runs\n\n" + (problems.to_markdown(index=False) if not problems.empty else "None.") + "\n")
    pngs = plot_curves(rs, out_dir / "plots")
    if pngs:
        parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in pngs) + "\n")
    text = "\n".join(parts)
    (out_dir / "tables.md").write_text(text)
    return text
