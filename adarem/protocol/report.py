"""The comparison's own report sections: provenance (command, commit, versions, machine, thread
layout, data identity, protocol) and the hyperparameter-selection table."""

from __future__ import annotations

import datetime as dt
import os
import platform

from adarem.protocol.search import SELECT_SEED0


def provenance(command: str, own: dict, threads: int, data_identity, n_select: int, final_seeds: list[int]) -> str:
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
        f"{final_seeds[0]}..{final_seeds[-1]}; score = mean holdout top-1 error, ties by holdout loss; finals "
        f"evaluated {own['evals_per_epoch']} times per epoch unless trainer.evals_per_epoch was given\n"
    )


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
        if edge == "low" and srch.blocked:  # the next lr down would be below schedule.min_lr or warmup_lr
            flag = f"**yes (low; {srch.blocked})**"
        lines.append(f"| {opt} | {srch.lr0:g} | {', '.join(f'{x:.3g}' for x in srch.lrs)} | "
                     f"{', '.join(f'{w:g}' for w in srch.wds)} | {len(srch.trials())} (x{len(select_seeds)})"
                     f"{f', +{srch.extensions} extension(s)' if srch.extensions else ''} | {lr:.3g} | {wd:g} | "
                     f"{err:.2f} | {loss:.4f} | {flag} |")
    return "\n".join(lines) + "\n"
