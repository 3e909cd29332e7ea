"""Compact copies of run records, for committing a study under results/.

    python scripts/export_runs.py runs/compare/fashion_mnist results/fashion_mnist/runs
    python -m adarem.results.export SRC DEST          # the same, from an installed package

Copies every run directory under SRC that the tables read (records.find_run_dirs: a run.json or a
metrics.jsonl, through symlinked folders, not a run's wandb copies nor a staging folder), keeping
the layout below SRC (so that ``compare.py runs=DEST`` finds its trials there again): run.json as
written, and metrics.jsonl
without the per-layer breakdown of the oscillation lines (``per_layer``, ``per_layer_efficiency``:
about 90 % of the bytes, read by no table), and compare.py's comparison manifests
(``comparisons/*.json``: which final runs are which comparison's). Checkpoints and lock files are
not copied. The tables
made from DEST are the tables made from SRC (tests/results/test_export.py). DEST must not exist:
a copy is never merged into, or written over, another. The copy is made in a hidden sibling,
``.DEST.staging-*``, and renamed to DEST once complete; an export killed midway leaves that
folder, which the next export to DEST removes (adarem.fsync.staged_directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from adarem.fsync import staged_directory
from adarem.results.comparisons import MANIFEST_DIR, manifest_root

DROPPED_KEYS = ("per_layer", "per_layer_efficiency")


def _compact_line(line: bytes) -> bytes:
    """One metrics.jsonl line without the per-layer keys; a line that does not parse (a torn write,
    a bad byte) is kept byte for byte (the tables report it the same way from either copy)."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return line
    if not isinstance(record, dict) or not any(k in record for k in DROPPED_KEYS):
        return line
    return (json.dumps({k: v for k, v in record.items() if k not in DROPPED_KEYS}) + "\n").encode()


def export_runs(src: Path, dest: Path) -> int:
    """Copy the compact records of every run under ``src`` to ``dest``; returns how many runs."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory of runs")
    if dest.exists():
        raise FileExistsError(f"{dest} exists; export into a new directory (nothing is merged or overwritten)")
    # the run directories the tables read (records.find_run_dirs): through symlinked folders too (a
    # runs folder's final/ moved to a bigger disk; rglob does not follow them, and the copy silently
    # lacked every run below one), not a run's wandb copies nor a staging folder's
    from adarem.results.records import find_run_dirs

    run_dirs = find_run_dirs(src)
    if not any((d / "run.json").is_file() for d in run_dirs):
        raise FileNotFoundError(f"no run.json under {src}")
    # each runs folder with manifests, by its path below SRC (spelled, or resolved where only that
    # finds it); one outside SRC is refused below
    here, real = Path(os.path.abspath(src)), src.resolve()
    roots, outside = {}, []
    for root in {manifest_root(d) for d in run_dirs} - {None}:
        spelled = Path(os.path.abspath(root))
        if spelled.is_relative_to(here):
            roots[spelled.relative_to(here)] = root
        elif root.resolve().is_relative_to(real):
            roots[root.resolve().relative_to(real)] = root
        else:
            outside.append(str(root))
    outside.sort()
    if outside:  # without them the copy's tables would pool comparisons that the original's keep apart
        raise ValueError(f"the comparison manifests of these runs are in {outside[0]}/{MANIFEST_DIR}, outside {src}; "
                         f"export the comparison's whole runs folder, {outside[0]}")
    with staged_directory(dest) as staging:  # all or nothing: a half-made copy never has DEST's name
        for run_dir in run_dirs:
            out = staging / run_dir.relative_to(src)
            out.mkdir(parents=True, exist_ok=True)
            if (run_dir / "run.json").is_file():  # a record without one is copied too: listed alike
                shutil.copy2(run_dir / "run.json", out / "run.json")
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():
                with open(metrics, "rb") as fin, open(out / "metrics.jsonl", "wb") as fout:
                    fout.writelines(_compact_line(line) for line in fin)
        # which finals are which comparison's: every manifest folder below SRC, and those of the runs
        # folders the run directories were found in through a symlink (rglob does not follow one)
        manifests = {m.relative_to(src): m for m in src.rglob(f"{MANIFEST_DIR}/*.json")}
        for rel, root in roots.items():
            manifests.update({rel / MANIFEST_DIR / m.name: m for m in (Path(root) / MANIFEST_DIR).glob("*.json")})
        for rel, manifest in sorted(manifests.items()):
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest, out)
    return len(run_dirs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/export_runs.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a directory of runs (e.g. a comparison's runs=)")
    ap.add_argument("dest", help="a new directory for the compact copies")
    args = ap.parse_args(argv)
    try:
        n = export_runs(Path(args.src), Path(args.dest))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {n} runs to {args.dest} (run.json + metrics.jsonl without per-layer oscillation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
