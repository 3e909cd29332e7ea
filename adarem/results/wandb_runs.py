"""Run records from a wandb project, for ``adarem-tables --wandb ENTITY/PROJECT``.

train.py attaches each run's record files (run.json, metrics.jsonl) to its wandb run when the run
ends (adarem/tracking.py). This module downloads them, one directory per wandb run, so that the
tables made from wandb are made by the same code (``load_runs``) from the same files as the tables
made from the run directories. A wandb run without them (still running, crashed, logged by another
tool or by a version of this suite that attached nothing) is listed as a problem, never rebuilt
from wandb's history: the history merges the lines logged at one step and has no run status, final
error or data identity, so a table made from it would measure something else.
"""

from __future__ import annotations

import json
from pathlib import Path

from adarem.fsync import StagingError, staged_directory
from adarem.results.comparisons import runs_folder
from adarem.run.record import METRICS, RUN_JSON

RECORD_FILES = (RUN_JSON, METRICS)


def _compare_final(run_dir: Path) -> bool:
    """Whether a downloaded record is a compare.py final run (its run_dir: <runs>/final/<opt>/<trial>)."""
    try:
        config = json.loads((run_dir / RUN_JSON).read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return runs_folder(str(config.get("run_dir") or "")) is not None


def download_runs(project: str, dest: Path, api=None) -> list[dict]:
    """Download the run record of every run of ``project`` (``ENTITY/PROJECT``) into
    ``dest/<wandb run id>/``; returns one problem (``run_dir``, ``problem``) per run without one.

    ``dest`` is replaced as a whole: it is a copy of the project as it is now, so a run deleted
    from the project, or a record re-attached since, never survives from an earlier download. It is
    written aside and swapped in once complete (``adarem.fsync.staged_directory``): a download that
    fails or is killed midway leaves the previous ``dest``, or none."""
    if api is None:
        import wandb

        api = wandb.Api()
    dest = Path(dest)
    problems = []
    # all or nothing, and a killed download's staging folder is removed by the next one
    with staged_directory(dest, replace=True) as staging:
        for run in api.runs(project):
            files = {f.name: f for f in run.files(names=list(RECORD_FILES))}
            if RUN_JSON not in files:
                problems.append({"run_dir": f"wandb:{project}/{run.id}",
                                 "problem": f"no {RUN_JSON} attached (wandb state {run.state}: still running, "
                                            f"crashed, or not logged by adarem-train): excluded"})
                continue
            for f in files.values():
                handle = f.download(root=str(staging / run.id), replace=True)
                if handle is not None:
                    handle.close()
        from_compare = sum(_compare_final(staging / run_dir.name) for run_dir in staging.iterdir())
        if from_compare:
            problems.append({"run_dir": f"wandb:{project}", "problem": (
                f"{from_compare} run(s) are compare.py finals: which comparison chose which configuration is "
                f"recorded in their runs folder (comparisons/*.json), not on wandb, so runs of two comparisons "
                f"of one setting are selected here by seed count; tabulate the runs folder to report its newest")})
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            raise StagingError(f"{dest} is not a folder this command made; move it away or pass another --out")
    return problems
