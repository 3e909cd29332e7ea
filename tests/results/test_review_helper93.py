"""Hostile review (helper-93, interruptions and resumes) of how records are read: each test fails
on the code before its fix."""

from __future__ import annotations

import json

from adarem.results import load_runs
from tests.results.test_tables import make_run


def test_a_finished_run_with_recorded_lost_lines_keeps_its_final_error(tmp_path):
    """A run whose metrics.jsonl lost an epoch line (run.json's metrics_lines_lost: a cut file, a
    resume=<path> of an older version) was excluded as 'metrics.jsonl disagrees with run.json (2
    epoch lines for 3 epochs, last evaluated error 9.0 vs final 9.0)': its final error stands, its
    curve has holes; without a recorded loss the missing line is still a disagreement."""
    for lost in (1, 0):
        root = tmp_path / f"lost{lost}"
        d = make_run(root, "r", "sgd", 0, [30.0, 20.0, 9.0])
        lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines
                                                 if not (x["type"] == "epoch" and x["epoch"] == 0)))
        record = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**record, "metrics_lines_lost": lost}))
        rs = load_runs(root)
        if lost:
            assert len(rs.runs) == 1 and rs.runs.final_top1.iloc[0] == 9.0, rs.problems
            assert "lost" in rs.runs.curve_gap.iloc[0]
        else:
            assert rs.runs.empty
            assert rs.problems[0]["problem"] == ("metrics.jsonl disagrees with run.json (2 epoch lines for 3 epochs, "
                                                 "and no line recorded lost): excluded"), rs.problems
