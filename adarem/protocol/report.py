"""The comparison's own report sections: provenance (command, commit, versions, machine, thread
layout, data identity, protocol) and the hyperparameter-selection table."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from collections import Counter

from adarem.protocol.search import ERR_TIE, SELECT_SEED0
from adarem.run.code_version import same_code


def provenance(command: str, own: dict, threads: int, data_identity, n_select: int, final_seeds: list[int],
               evals_given: int | None = None) -> str:
    """The report's provenance section. ``evals_given``: the trainer.evals_per_epoch the user gave
    (every trial's, compare.py's evals_per_epoch= unused), else None (the finals take evals_per_epoch=)."""
    import torch

    from adarem.run.record import git_info, versions

    git = git_info()
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    if own.get("launcher", "local") == "local":
        layout = (f"{own['workers']} worker processes x {threads} torch threads each "
                  f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    else:  # the trials ran elsewhere: each run.json records its own hardware and thread layout
        layout = (f"SLURM job arrays through submitit, one array per stage (partition {own.get('partition') or 'default'}, "
                  f"{own.get('nodes', 1)} node(s) x {own.get('gpus_per_node', 0)} GPU(s) per trial); each run.json "
                  f"records its machine and threads")
    return (
        "## Provenance\n\n"
        f"- command: `{command}`\n"
        f"- commit: `{git['commit']}`{' (with uncommitted changes)' if git['dirty'] else ''}\n"
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs\n"
        f"- threads: {layout}; torch {torch.__version__}\n"
        f"- versions: {vers}\n"
        f"- data: {data_identity}\n"
        f"- protocol: search={own['search']}, {n_select} selection seeds ({SELECT_SEED0}..), final seeds "
        f"{final_seeds[0]}..{final_seeds[-1]}; score = mean holdout top-1 error, ties by holdout loss; "
        + (f"finals evaluated {own['evals_per_epoch']} times per epoch (compare.py's evals_per_epoch={own['evals_per_epoch']})\n" if evals_given is None else
           f"every trial evaluated {evals_given} times per epoch (trainer.evals_per_epoch={evals_given})\n")
    )


ENDED = ("finished", "diverged")  # a trial's result: anything else did not run to an end


def untested_sides(srch, lr: float, wd: float) -> list[str]:
    """Why the chosen point's neighbours on the lr grid do not bound it: a neighbour with a trial
    that did not run to an end (failed: a crash, an error; stopped, interrupted) scores worst like
    a diverged one, but says nothing about that lr, so the chosen lr may sit on an edge in effect."""
    lrs = sorted(srch.lrs)
    i = lrs.index(lr)
    out = []
    for j, side in ((i - 1, "below"), (i + 1, "above")):
        if not 0 <= j < len(lrs):
            continue
        res = [r for (x, w, _), r in sorted(srch.results.items()) if x == lrs[j] and w == wd]
        bad = [r for r in res if r.get("status") not in ENDED]
        if bad:
            first = bad[0]
            why = f"{first.get('status', 'unknown')}" + (f": {first['error']}" if first.get("error") else "")
            out.append(f"the lr {side} it, {lrs[j]:.3g}, did not run to an end on {len(bad)} of {len(res)} "
                       f"seed(s) ({why}); scored as worst, it leaves that side untested")
    return out


def _point(srch, lr: float, wd: float) -> str:
    return f"{lr:.3g}" + (f" wd {wd:g}" if len(srch.wds) > 1 else "")


def seed_choices(srch, select_seeds: list[int]) -> str:
    """The point each selection seed alone would have chosen: "same" where they agree; where they do
    not, the chosen point rests on their mean, and the runner-up's margin says how narrowly."""
    if len(select_seeds) < 2:
        return "—"
    picks = {s: srch.best([s])[:2] for s in select_seeds}
    if len(set(picks.values())) == 1:
        return "same"
    return "**" + ", ".join(f"s{s}: {_point(srch, *p)}" for s, p in picks.items()) + "**"


def runner_up(srch, chosen: tuple, select_seeds: list[int]) -> str:
    """The next best point tried and how much higher its mean holdout error is (points)."""
    lr, wd, err = chosen[:3]
    others = [(srch.point_score(x, w, select_seeds)[0], x, w) for x, w in srch.trials() if (x, w) != (lr, wd)]
    others = [o for o in others if math.isfinite(o[0])]
    if not others or not math.isfinite(err):
        return "—"
    e2, x, w = min(others)
    if abs(e2 - err) <= ERR_TIE * max(1.0, abs(err)):  # the same mistakes: the loss chose (Search.best)
        return f"{_point(srch, x, w)} (same error; the loss decided)"
    return f"{_point(srch, x, w)} (+{e2 - err:.2f})"


def selection_table(searches: dict, chosen: dict, select_seeds: list[int], factors: list[float]) -> str:
    lines = ["## Hyperparameter selection (holdout of the training split; selection.csv has every trial)\n",
             f"Grid before extension: the default lr times {', '.join(f'{f:.3g}' for f in factors)}"
             f" ({len(factors)} lrs); every optimizer got the same trials before extension. Each seed alone: the "
             f"point each selection seed would have chosen by itself (where they differ, the choice rests on the "
             f"mean of {len(select_seeds)} seeds); runner-up: the next best point and how many points of mean "
             f"holdout error it lost by.\n",
             "| optimizer | default lr | lrs tried | weight decays | trials (x seeds) | chosen lr | chosen wd "
             "| holdout err (%) | holdout loss | each seed alone | runner-up (+err) | on the edge? |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for opt, srch in searches.items():
        lr, wd, err, loss = chosen[opt]
        edge = srch.edge(lr)
        flag = f"**yes ({edge})**" if edge in ("low", "high") else f"**{edge}**" if edge else "no"
        if edge in ("low", "high") and srch.blocked[edge]:  # below min_lr/warmup_lr, or above LR_MAX
            flag = f"**yes ({edge}; {srch.blocked[edge]})**"
        wd_side = srch.wd_edge(wd)
        if wd_side:  # the weight decay grid is never extended: only flagged
            flag = f"{flag}; **wd: yes ({wd_side}, not extended)**"
        for side in untested_sides(srch, lr, wd):  # a neighbour that crashed bounds nothing
            flag = f"{flag}; **{side.replace('|', '/')}**"
        lines.append(f"| {opt} | {srch.lr0:g} | {', '.join(f'{x:.3g}' for x in srch.lrs)} | "
                     f"{', '.join(f'{w:g}' for w in srch.wds)} | {len(srch.trials())} (x{len(select_seeds)})"
                     f"{f', +{srch.extensions} extension(s)' if srch.extensions else ''} | {lr:.3g} | {wd:g} | "
                     f"{err:.2f} | {loss:.4f} | {seed_choices(srch, select_seeds)} | "
                     f"{runner_up(srch, chosen[opt], select_seeds)} | {flag} |")
    return "\n".join(lines) + "\n"


def edge_summary(searches: dict, chosen: dict) -> list[str]:
    """One line per chosen configuration on the edge of its grid (lr after extension, or weight
    decay, which is never extended) or next to an lr whose trials did not run to an end
    (``untested_sides``), for the console summary."""
    out = []
    for opt, srch in searches.items():
        lr, wd = chosen[opt][:2]
        side = srch.edge(lr)
        if side in ("low", "high"):
            out.append(f"{opt}: the chosen lr {lr:.3g} is the {'lowest' if side == 'low' else 'highest'} tried"
                       + (f" ({srch.blocked[side]})" if srch.blocked[side] else ""))
        out += [f"{opt}: {side}" for side in untested_sides(srch, lr, wd)]
        wd_side = srch.wd_edge(wd)
        if wd_side:
            out.append(f"{opt}: the chosen weight decay {wd:g} is the {'lowest' if wd_side == 'low' else 'highest'} "
                       f"of its grid ({', '.join(f'{w:g}' for w in srch.wds)}), which is not extended")
    return out


def _commit_text(commit, dirty) -> str:
    return f"`{(commit or 'unknown')[:10]}`" + (" (with uncommitted changes)" if dirty else "")


# what code_section reads of each run besides its commit: dispatch.recorded's keys
TRAINED_WITH = ("diff_sha1", "versions", "device", "threads", "mixed_provenance")

# the packages whose version can change what a run computes (wandb, hydra, submitit cannot)
NUMERIC_PACKAGES = ("python", "torch", "torchvision", "timm", "numpy", "pillow", "nvidia-dali-cuda130")


def code_section(rows: list[dict], now: dict | None = None) -> tuple[str, list[str]]:
    """What the selection trials and the final runs were trained with, from their run.json (a
    relaunch reuses finished trials trained by older code, other versions, other threads), and a
    warning for each way they differ from one another or from ``now`` (the code and versions of
    this invocation: {"commit", "dirty", "versions"}); (Markdown, warnings). A trial that failed
    without a run record (train() raised before writing one) was trained with nothing: left out."""
    rows = [r for r in rows if not (r.get("status") == "failed" and r.get("commit") is None)]
    def commits(stage):
        return Counter((r.get("commit"), bool(r.get("dirty"))) for r in rows if r["stage"] == stage)

    sel, fin = commits("select"), commits("final")

    def say(seen):
        return "; ".join(f"{_commit_text(c, d)} ({n} run(s))" for (c, d), n in sorted(seen.items(), key=str)) or "none"

    lines = ["## Code the runs were trained at\n",
             f"- selection trials: {say(sel)}", f"- final runs: {say(fin)}"]
    warnings = []
    if set(sel) != set(fin) or len(sel) > 1 or len(fin) > 1:
        warnings.append(f"the selection trials and the final runs were not all trained at one commit (selection: "
                        f"{say(sel)}; finals: {say(fin)}): a relaunch reuses finished trials of older code; give runs= "
                        f"a fresh folder to run the whole protocol at one commit")
    # against the code of this invocation: its commit and, on a changed tree, which changes (a
    # relaunch after a pull, or after an edit not committed, reuses every finished trial)
    if now and now.get("commit"):  # changes whose hash could not be taken count as other changes
        other = [r for r in rows if not same_code(r, now)]
        if other:
            if not all(r.get("commit") == now["commit"] for r in other):
                which = "other code than this invocation's"
            elif not any(r.get("dirty") for r in other):  # helper-92: "other uncommitted changes" of clean runs
                which = "none of the uncommitted changes of this invocation"
            elif now.get("dirty"):
                which = "other uncommitted changes than this invocation's"
            else:
                which = "uncommitted changes that this invocation does not have"
            warnings.append(f"{len(other)} of {len(rows)} run(s) were trained with {which} "
                            f"({_commit_text(now['commit'], now.get('dirty'))}), e.g. {other[0].get('run_dir', '?')}: "
                            f"compare.py reused them; give runs= a fresh folder to train every run at this code")
    if any(d for _, d in [*sel, *fin]):
        diffs = {r.get("diff_sha1") for r in rows if r.get("dirty")}
        warnings.append("the runs were trained with uncommitted changes: the commit does not pin their code"
                        + (f" (and with {len(diffs)} different sets of them, run.json git.diff_sha1)"
                           if len(diffs) > 1 else ""))
    # the versions that can change a result: the runs' own, against one another and this invocation's
    recorded = [r["versions"] for r in rows if isinstance(r.get("versions"), dict)]
    current_versions = (now or {}).get("versions") or {}
    differ = []
    for pkg in NUMERIC_PACKAGES:
        seen = Counter(str(v[pkg]) for v in recorded if v.get(pkg) is not None)
        current = current_versions.get(pkg)
        if len(seen) > 1 or (seen and current is not None and set(seen) != {str(current)}):
            differ.append(f"{pkg} " + ", ".join(f"{v} ({n} run(s))" for v, n in sorted(seen.items()))
                          + (f", now {current}" if current is not None else ""))
    if recorded:
        lines.append("- versions: " + ", ".join(f"{p} {recorded[0][p]}" for p in NUMERIC_PACKAGES if p in recorded[0])
                     + (" (of the first run; not every run's: see the warning)" if differ else ""))
    if differ:
        warnings.append(f"the runs were not all trained with the versions of this invocation: {'; '.join(differ)}")
    # torch threads of CPU runs: another count sums in another order (results differ in the last
    # digits, more over a run); a relaunch with another workers= reuses the finished trials
    threads = Counter(r["threads"] for r in rows if r.get("device") == "cpu" and r.get("threads") is not None)
    if threads:
        lines.append("- torch threads per CPU run: " + ", ".join(f"{t} ({n} run(s))" for t, n in sorted(threads.items())))
    if len(threads) > 1:
        warnings.append(f"the CPU runs were trained with different numbers of torch threads "
                        f"({', '.join(f'{t}: {n} run(s)' for t, n in sorted(threads.items()))}; e.g. relaunched with "
                        f"another workers=): their sums are taken in another order")
    devices = Counter(r["device"] for r in rows if r.get("device"))
    if len(devices) > 1:
        warnings.append(f"the runs were trained on different devices "
                        f"({', '.join(f'{d}: {n} run(s)' for d, n in sorted(devices.items()))})")
    mixed = [r for r in rows if r.get("mixed_provenance")]
    if mixed:
        what = sorted({str(k) for r in mixed for k in r["mixed_provenance"]})
        warnings.append(f"{len(mixed)} run(s) were resumed with another {', '.join(what)} than they started with "
                        f"(run.json mixed_provenance), e.g. {mixed[0].get('run_dir', '?')}")
    lines += [f"\n**Warning:** {w}." for w in warnings]
    return "\n".join(lines) + "\n", warnings
