"""Regenerate the comparison tables, claims verdicts and plots from logged runs.

    adarem-tables runs/compare/digits --out results/digits
    adarem-tables --wandb my-entity/adarem --out results/imagenet      # via the wandb API
    python -m adarem.cli.tables ...  /  python scripts/make_tables.py ...   # the same

Reads every run record (run.json + metrics.jsonl) under RUNS_DIR, or, with --wandb, the run
records that train.py attached to the project's wandb runs (downloaded afresh into
OUT/wandb_runs; a wandb run without one is listed, not rebuilt from its history). Incomplete, crashed and
duplicate runs, and finished ones whose metrics.jsonl disagrees with run.json, are listed in their
own section and kept out of the means; a torn metrics.jsonl line (a write cut short) is listed
there too, and the run is kept (its run.json and complete lines agree). Writes tables.md
(README-ready), *.tex (booktabs), *.csv, claims.csv and plots/*.png into --out.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from adarem.fsync import StagingError
from adarem.results import CLAIMS_FILE, load_runs, write_report
from adarem.results.claims import load_claims
from adarem.results.wandb_runs import download_runs


def main(argv=None, prog: str = "adarem-tables") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir", nargs="?", help="directory holding run directories")
    ap.add_argument("--out", default=None, help="output directory (default results/<runs_dir name>)")
    ap.add_argument("--claims", default=str(CLAIMS_FILE), help="claims to test (default: the package's adarem/results/claims.yaml)")
    ap.add_argument("--targets", default="1,5", help="target errors: SGD final error + these points")
    ap.add_argument("--wandb", default=None, help="ENTITY/PROJECT: read runs through the wandb API")
    args = ap.parse_args(argv)
    if bool(args.wandb) == bool(args.runs_dir):
        ap.error("give RUNS_DIR or --wandb ENTITY/PROJECT (one of them)")
    if args.runs_dir and not Path(args.runs_dir).is_dir():
        what = "is a file, not a directory" if Path(args.runs_dir).exists() else "does not exist"
        print(f"error: runs directory {args.runs_dir} {what}; pass the directory train.py or compare.py wrote",
              file=sys.stderr)
        return 2
    try:
        offsets = tuple(float(x) for x in args.targets.split(","))
    except ValueError:
        print(f"error: --targets={args.targets!r} must be comma-separated numbers, e.g. 1,5", file=sys.stderr)
        return 2
    bad = [o for o in offsets if not (0 <= o < math.inf)]  # nan fails both comparisons
    if bad:
        print(f"error: --targets={args.targets}: {', '.join(f'{o:g}' for o in bad)} is not a finite number >= 0 "
              f"(points of error above SGD's final error; inf would count every run as there at its first "
              f"evaluation), e.g. 1,5", file=sys.stderr)
        return 2
    if list(offsets) != sorted(set(offsets)):  # the claims use the first: an order must not choose it unseen
        print(f"error: --targets={args.targets} must be increasing without repeats (the first, the smallest, is the "
              f"claims' target), e.g. {','.join(f'{o:g}' for o in sorted(set(offsets)))}; give one offset alone "
              f"for the claims at it", file=sys.stderr)
        return 2
    out = Path(args.out or Path("results") / (args.wandb.replace("/", "_") if args.wandb else Path(args.runs_dir).name))
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; pass a directory for the tables, CSVs and plots", file=sys.stderr)
        return 2
    if args.claims and not Path(args.claims).is_file():
        print(f"error: --claims {args.claims} does not exist; pass a claims YAML (as adarem/results/claims.yaml)", file=sys.stderr)
        return 2
    if args.claims:
        try:  # before anything is read or written: a bad claims file used to fail after the tables, in a traceback
            load_claims(Path(args.claims))
        except (ValueError, OSError) as exc:
            print(f"error: --claims {args.claims}: {exc}", file=sys.stderr)
            return 2
    from adarem.protocol.cli import folder_problem

    # checked, not made: a command that then finds nothing to tabulate (or fails) leaves no empty folder
    problem = folder_problem(out, staged=True)
    if problem:
        print(f"error: --out {out} {problem}; pass a directory that can be created and written", file=sys.stderr)
        return 2
    fetched = []  # wandb runs without a run record: listed with the other excluded runs
    if args.wandb:
        # absolute: a working directory inside the old download is moved away by its replacement
        out = Path(os.path.abspath(out))
        root = out / "wandb_runs"  # the project's run records as they are now, beside the tables made from them
        try:
            fetched = download_runs(args.wandb, root)
        except Exception as exc:  # noqa: BLE001 - wandb's errors (network, login, bad path) are many
            if isinstance(exc, StagingError):  # the local folder, not the project: say so
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if isinstance(exc, OSError) and exc.errno is not None:  # a local file system error (full disk,
                # permissions); requests' connection errors are OSErrors without an errno
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"error: cannot write the wandb download into {root} ({where}{exc.strerror or exc}); free "
                      f"space or pass a writable --out", file=sys.stderr)
                return 2
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: cannot read the wandb project {args.wandb!r} ({first}); check ENTITY/PROJECT and "
                  f"`wandb login` (or WANDB_API_KEY)", file=sys.stderr)
            return 2
    else:
        root = Path(args.runs_dir)
    rs = load_runs(root)
    rs.problems = fetched + rs.problems
    if rs.runs.empty:
        print(f"error: no complete run under {args.wandb or root} ({len(rs.problems)} flagged); nothing to tabulate",
              file=sys.stderr)
        for p in rs.problems:
            print(f"  {p['run_dir']}: {p['problem']}", file=sys.stderr)
        return 2
    command = f"{prog} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = write_report(rs, out, Path(args.claims) if args.claims else None, command, offsets)
    print(text)
    print(f"wrote {out}/tables.md, *.csv, *.tex, plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m adarem.cli.tables"))
