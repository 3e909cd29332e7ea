"""Which final runs belong to which comparison: the manifests compare.py writes.

A comparison's runs folder (``runs=``, default ``runs/compare/<experiment>``) keeps its run
directories when the comparison is launched again with other options (another lr grid, search,
seed count, optimizer list), so that finished trials are reused. Two comparisons of one setting
can then leave final runs of the same optimizer at two learning rates in ``final/``, and nothing
in a run record says which comparison chose which: tabulating the folder would pair SGD as one
comparison's search chose it with AdaRem as the other's did.

So compare.py writes, when its finals are done and before its report, a manifest
``<runs>/comparisons/<time>.json`` naming its command, options, chosen configurations and final
run directories. ``load_runs`` (make_tables) reads the manifests of the runs it finds: within a
dataset x model, each optimizer that a manifest covers is tabulated from the final runs of the
newest comparison that ran it, and every other run of it there is listed as excluded with the
reason. The folder's tables are then the newest comparison's, as compare.py printed them; where
the optimizers of one table come from several comparisons (``optimizers=`` split over two
launches), the report says which came from which.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pandas as pd

from adarem.fsync import replace_durably

MANIFEST_DIR = "comparisons"


def write_manifest(runs_root: Path, command: str, options: dict, overrides: list[str], chosen: dict,
                   final_dirs: list[str]) -> Path:
    """Record one finished comparison under ``runs_root/comparisons/`` (atomic; never overwrites)."""
    runs_root = Path(runs_root).resolve()
    folder = runs_root / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    record = {
        "finished": dt.datetime.fromtimestamp(stamp / 1e9, dt.timezone.utc).isoformat(timespec="microseconds"),
        "command": command,
        "options": options,
        "overrides": overrides,
        "chosen": chosen,
        # relative to the runs folder, so that an exported copy of the folder keeps them
        "finals": sorted({os.path.relpath(Path(d).resolve(), runs_root) for d in final_dirs}),
    }
    path = folder / f"{stamp}.json"
    tmp = folder / f".{stamp}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    replace_durably(tmp, path)
    return path


def manifest_root(run_dir: Path) -> Path | None:
    """The runs folder of a compare.py final run (``<runs>/final/<optimizer>/<trial>``), if it has
    manifests; None for a run laid out otherwise."""
    parents = Path(run_dir).resolve().parents
    if len(parents) < 3 or parents[1].name != "final":
        return None
    root = parents[2]
    return root if (root / MANIFEST_DIR).is_dir() else None


def read_manifests(root: Path) -> tuple[list[dict], list[dict]]:
    """(the manifests of a runs folder, each with ``file`` and ``final_paths``, the resolved run
    directories; problems): a manifest that does not parse is listed and not used."""
    out, problems = [], []
    for path in sorted((root / MANIFEST_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            record["final_paths"] = {str((root / f).resolve()) for f in record["finals"]}
            record["finished"] = str(record["finished"])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append({"run_dir": str(path), "problem": f"comparison manifest unreadable ({type(exc).__name__}: "
                             f"{exc}): not used; the runs it lists are tabulated as if it did not exist"})
            continue
        record["file"] = str(path)
        out.append(record)
    return out, problems


def newest_comparison_only(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The val runs of each dataset x model x optimizer that a compare.py manifest lists, reduced
    to the finals of the newest comparison that ran that optimizer; (kept runs, problems and
    notes). Runs that no manifest could list (another layout, no manifests) are untouched."""
    if runs.empty:
        return runs, []
    manifests, problems = [], []
    for root in {manifest_root(d) for d in runs.run_dir} - {None}:
        found, bad = read_manifests(root)
        manifests += found
        problems += bad
    if not manifests:
        return runs, problems
    resolved = runs.run_dir.map(lambda d: str(Path(d).resolve()))
    drop = []
    # per setting (adarem/results/records.py): two comparisons with other epochs are two settings,
    # each reported; within one, the newest comparison that ran an optimizer gives its runs
    for (name, model, _), table in runs[runs.eval_on == "val"].groupby(["dataset", "model", "setting_id"]):
        sources = {}
        for opt, g in table.groupby("optimizer"):
            covering = [m for m in manifests if resolved[g.index].isin(m["final_paths"]).any()]
            if not covering:
                continue
            newest = max(covering, key=lambda m: (m["finished"], m["file"]))
            sources.setdefault(newest["file"], []).append(opt)
            for i in g.index[~resolved[g.index].isin(newest["final_paths"])]:
                drop.append(i)
                problems.append({"run_dir": runs.run_dir[i], "problem": (
                    f"not a final run of the newest comparison that ran {opt} on {name} x {model} in this folder "
                    f"({newest['file']}: {newest['command']}): excluded, so that no optimizer's runs mix two "
                    f"comparisons' selections (an earlier comparison's report is its own tables.md)")})
        if len(sources) > 1:
            problems.append({"run_dir": f"({name} x {model})", "problem": "optimizers from several comparisons: " +
                             "; ".join(f"{', '.join(sorted(opts))} from {f} ({next(m['command'] for m in manifests if m['file'] == f)})"
                                       for f, opts in sorted(sources.items())) +
                             ": each was selected by its own comparison's search, possibly over other grids"})
    return runs.drop(index=drop).reset_index(drop=True), problems
