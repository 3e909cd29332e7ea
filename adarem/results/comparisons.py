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
launches), the report says which came from which. The newest comparison is taken over every runs
folder read: make_tables on the parent of two comparisons' folders tabulates each optimizer from the
newest of them, so that no claim pairs one comparison's SGD with another's AdaRem (tabulate one runs
folder for its own comparison). Two comparisons that finished at the same time (copies of a folder)
are told apart by their manifest's path, and the report says so.
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
    runs_root = Path(os.path.abspath(runs_root))  # as spelled: final/ may be a symlink to another disk
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
        "finals": sorted({os.path.relpath(os.path.abspath(d), runs_root) for d in final_dirs}),
    }
    path = folder / f"{stamp}.json"
    tmp = folder / f".{stamp}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    replace_durably(tmp, path)
    return path


def _path_keys(path) -> set[str]:
    """A run directory as spelled (absolute, normalised) and as resolved: a folder reached through a
    symlink (a runs folder moved to a bigger disk) matches either way."""
    return {os.path.abspath(path), str(Path(path).resolve())}


def runs_folder(run_dir) -> Path | None:
    """The runs folder of a run laid out as compare.py's finals (``<runs>/final/<optimizer>/<trial>``),
    else None."""
    parents = Path(run_dir).parents
    return parents[2] if len(parents) >= 3 and parents[1].name == "final" else None


def manifest_root(run_dir: Path) -> Path | None:
    """The runs folder of a compare.py final run, if it has manifests; None for a run laid out
    otherwise. Looked up as spelled, then as resolved."""
    for spelled in (os.path.abspath(run_dir), Path(run_dir).resolve()):
        root = runs_folder(spelled)
        if root is not None and (root / MANIFEST_DIR).is_dir():
            return root
    return None


def read_manifests(root: Path) -> tuple[list[dict], list[dict]]:
    """(the manifests of a runs folder, each with ``file`` and ``final_keys``, its final run
    directories as ``_path_keys``; problems): a manifest that does not parse is listed, not used."""
    out, problems = [], []
    for path in sorted((root / MANIFEST_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            for key, kind in (("finals", list), ("finished", str), ("command", str)):
                if not isinstance(record.get(key), kind):
                    raise TypeError(f"{key!r} missing or not a {kind.__name__}")
            if not all(isinstance(f, str) for f in record["finals"]):
                raise TypeError("'finals' holds a non-string")
        except (ValueError, TypeError) as exc:
            problems.append({"run_dir": str(path), "problem": f"comparison manifest unreadable ({type(exc).__name__}: "
                             f"{exc}): not used; the runs it lists are tabulated as if it did not exist"})
            continue
        record["final_keys"] = set().union(*(_path_keys(root / f) for f in record["finals"]))
        record["file"] = str(path)
        out.append(record)
    return out, problems


def newest_comparison_only(runs: pd.DataFrame, listed: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The complete val runs (``runs``) of each dataset x model x setting x optimizer that a
    compare.py manifest lists, reduced to the finals of the newest comparison that ran that
    optimizer there; (kept runs, problems and notes). ``listed``: every run record read, complete
    or not (``run_dir`` and the same group columns), so that a comparison whose finals of an
    optimizer all failed still covers it: an older comparison's runs never stand in for them. Runs
    outside a compare.py runs folder with manifests are untouched."""
    if runs.empty:
        return runs, []
    roots = {d: manifest_root(d) for d in listed.run_dir}
    manifests, problems = [], []
    for root in set(roots.values()) - {None}:
        found, bad = read_manifests(root)
        manifests += found
        problems += bad
    if not manifests:
        return runs, problems

    def listing(run_dirs) -> list[dict]:
        keys = set().union(*(_path_keys(d) for d in run_dirs)) if len(run_dirs) else set()
        return [m for m in manifests if m["final_keys"] & keys]

    group = ["dataset", "model", "setting_id", "optimizer"]
    in_folder = runs.run_dir.map(lambda d: roots.get(d) is not None)
    val = runs[(runs.eval_on == "val") & in_folder]
    listed_by_group = {k: g.run_dir.tolist() for k, g in listed[listed.run_dir.map(lambda d: roots.get(d) is not None)]
                       .groupby(group)}
    drop, sources, ties = [], {}, set()  # sources: (dataset, model, setting) -> {manifest file: [optimizers]}
    for (name, model, setting, opt), g in val.groupby(group):
        covering = listing(listed_by_group.get((name, model, setting, opt), g.run_dir.tolist()))
        if not covering:
            continue
        newest = max(covering, key=lambda m: (m["finished"], m["file"]))
        tied = sorted(m["file"] for m in covering if m["finished"] == newest["finished"] and m["file"] != newest["file"])
        if tied:
            ties.add((newest["file"], *tied))
        sources.setdefault((name, model, setting), {}).setdefault(newest["file"], []).append(opt)
        for i in g.index:
            if not _path_keys(runs.run_dir[i]) & newest["final_keys"]:
                drop.append(i)
                problems.append({"run_dir": runs.run_dir[i], "problem": (
                    f"not a final run of the newest comparison that ran {opt} on {name} x {model} among the runs "
                    f"read ({newest['file']}: {newest['command']}): excluded, so that no optimizer's runs mix two "
                    f"comparisons' selections (an earlier comparison's report is its own tables.md)")})
    commands = {m["file"]: m["command"] for m in manifests}
    for (name, model, _), by_file in sources.items():
        if len(by_file) > 1:
            problems.append({"run_dir": f"({name} x {model})", "problem": "optimizers from several comparisons: " +
                             "; ".join(f"{', '.join(sorted(opts))} from {f} ({commands[f]})"
                                       for f, opts in sorted(by_file.items())) +
                             ": each was selected by its own comparison's search, possibly over other grids"})
    for used, *others in sorted(ties):
        problems.append({"run_dir": used, "problem": f"finished at the same time as {', '.join(others)} (copies of one "
                         f"runs folder?): this one, the later path, is used; tabulate one runs folder to choose"})
    return runs.drop(index=drop).reset_index(drop=True), problems
