"""Regenerate the comparison tables, claims verdicts and plots from logged runs.

    adarem-tables runs/compare/digits --out results/digits
    adarem-tables --wandb my-entity/adarem --out results/imagenet      # via the wandb API
    python -m adarem.cli.tables ...  /  python scripts/make_tables.py ...   # the same

Reads every run record (run.json + metrics.jsonl) under RUNS_DIR. Incomplete, crashed and
duplicate runs, and finished ones whose metrics.jsonl disagrees with run.json, are listed in their
own section and kept out of the means; a torn metrics.jsonl line (a write cut short) is listed
there too, and the run is kept (its run.json and complete lines agree). Writes tables.md
(README-ready), *.tex (booktabs), *.csv, claims.csv and plots/*.png into --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from adarem.results import CLAIMS_FILE, load_runs, write_report


def export_wandb_runs(path: str, dest: Path) -> Path:
    """Write the runs of a wandb project as run records (run.json + metrics.jsonl) under dest."""
    import wandb

    api = wandb.Api()
    for run in api.runs(path):
        out = dest / run.id
        out.mkdir(parents=True, exist_ok=True)
        status = {"finished": "finished", "crashed": "failed", "failed": "failed"}.get(run.state, run.state)
        record = {"status": status, "config": dict(run.config), "start_time": str(run.created_at)}
        (out / "run.json").write_text(json.dumps(record, default=str))
        with open(out / "metrics.jsonl", "w") as f:
            for row in run.scan_history():
                if "train_loss" in row:
                    f.write(json.dumps({"type": "epoch", **{k: v for k, v in row.items() if not k.startswith("_")}}) + "\n")
    return dest


def main(argv=None, prog: str = "adarem-tables") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir", nargs="?", help="directory holding run directories")
    ap.add_argument("--out", default=None, help="output directory (default results/<runs_dir name>)")
    ap.add_argument("--claims", default=str(CLAIMS_FILE), help="claims to test (default: the package's adarem/results/claims.yaml)")
    ap.add_argument("--targets", default="1,5", help="target errors: SGD final error + these points")
    ap.add_argument("--wandb", default=None, help="ENTITY/PROJECT: read runs through the wandb API")
    args = ap.parse_args(argv)
    if args.wandb:
        root = export_wandb_runs(args.wandb, Path(args.out or "results/wandb") / "wandb_export")
    elif args.runs_dir:
        root = Path(args.runs_dir)
        if not root.is_dir():
            print(f"error: runs directory {root} does not exist; pass the directory train.py or compare.py wrote",
                  file=sys.stderr)
            return 2
    else:
        ap.error("give RUNS_DIR or --wandb ENTITY/PROJECT")
    try:
        offsets = tuple(float(x) for x in args.targets.split(","))
    except ValueError:
        print(f"error: --targets={args.targets!r} must be comma-separated numbers, e.g. 1,5", file=sys.stderr)
        return 2
    rs = load_runs(root)
    if rs.runs.empty:
        print(f"error: no complete run under {root} ({len(rs.problems)} flagged); nothing to tabulate", file=sys.stderr)
        for p in rs.problems:
            print(f"  {p['run_dir']}: {p['problem']}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("results") / root.name)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; pass a directory for the tables, CSVs and plots", file=sys.stderr)
        return 2
    if args.claims and not Path(args.claims).is_file():
        print(f"error: --claims {args.claims} does not exist; pass a claims YAML (as adarem/results/claims.yaml)", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create --out {out} ({exc.strerror}); pass a writable directory", file=sys.stderr)
        return 2
    command = f"{prog} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = write_report(rs, out, Path(args.claims) if args.claims else None, command, offsets)
    print(text)
    print(f"wrote {out}/tables.md, *.csv, *.tex, plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m adarem.cli.tables"))
