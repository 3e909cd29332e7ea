"""The comparison's own report sections: provenance (command, commit, versions, machine, thread
layout, data identity, protocol) and the hyperparameter-selection table."""

from __future__ import annotations

import datetime as dt
import os
import platform

from adarem.protocol.search import SELECT_SEED0


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
                     f"{err:.2f} | {loss:.4f} | {flag} |")
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


def code_section(rows: list[dict]) -> tuple[str, str | None]:
    """The commits the selection trials and the final runs were trained at (their run.json's git
    record: a relaunch reuses finished trials trained by older code), and a warning line when the
    selection's differ from the finals'; (Markdown, warning or None)."""
    def commits(stage):
        seen: dict[tuple, int] = {}
        for r in rows:
            if r["stage"] == stage:
                key = (r.get("commit"), bool(r.get("dirty")))
                seen[key] = seen.get(key, 0) + 1
        return seen

    sel, fin = commits("select"), commits("final")

    def say(seen):
        return "; ".join(f"{_commit_text(c, d)} ({n} run(s))" for (c, d), n in sorted(seen.items(), key=str)) or "none"

    lines = ["## Code the runs were trained at\n",
             f"- selection trials: {say(sel)}", f"- final runs: {say(fin)}"]
    warning = None
    if set(sel) != set(fin) or len(sel) > 1 or len(fin) > 1:
        warning = (f"the selection trials and the final runs were not all trained at one commit (selection: "
                   f"{say(sel)}; finals: {say(fin)}): a relaunch reuses finished trials of older code; give runs= a "
                   f"fresh folder to run the whole protocol at one commit")
    elif any(d for _, d in [*sel, *fin]):
        warning = "the runs were trained with uncommitted changes: the commit does not pin their code"
    if warning:
        lines.append(f"\n**Warning:** {warning}.")
    return "\n".join(lines) + "\n", warning
