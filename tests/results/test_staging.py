"""Reading exactly a comparison's own run directories, and writing a report through one staging
folder that a killed writer does not leave behind for good."""

from __future__ import annotations


import pytest

from adarem.protocol import cli
from adarem.results import load_runs
from tests.results.test_tables import make_run

# --- load_runs(run_dirs=...): exactly the given directories ------------------------------------------


def test_load_runs_reads_exactly_the_given_run_dirs_named_as_given(tmp_path):
    """Two runs config_id cannot tell apart (trainer.oscillation_every differs): on the whole tree the
    first started wins; given the newer one alone, it is read, named as given, once."""
    root = tmp_path / "final"
    make_run(root, "older", "sgd", 0, [30.0, 20.0, 10.0], trainer={"oscillation_every": 10},
             start="2026-01-01T00:00:00")
    newer = make_run(root, "newer", "sgd", 0, [30.0, 20.0, 12.0], trainer={"oscillation_every": 0},
                     start="2026-02-01T00:00:00")
    assert load_runs(root, newest_comparison=False).subset([newer]).runs.empty  # the twin displaces it
    (tmp_path / "link").symlink_to(newer, target_is_directory=True)
    (tmp_path / "not_a_run").mkdir()
    given = [str(newer), str(newer), str(tmp_path / "link"), str(tmp_path / "gone"), str(tmp_path / "not_a_run")]
    for rs in (load_runs(run_dirs=given, newest_comparison=False), cli.load_own_runs(given)):
        assert list(rs.runs.run_dir) == [str(newer)] and list(rs.runs.final_top1) == [12.0]
        assert set(rs.evals.run_dir) == {str(newer)} and set(rs.iters.run_dir) == {str(newer)}
        assert rs.problems == [{"run_dir": str(tmp_path / "gone"), "problem": "no run directory: excluded"},
                               {"run_dir": str(tmp_path / "not_a_run"),
                                "problem": "no run record (run.json, metrics.jsonl): excluded"}]
    # the first spelling of a directory names it
    assert list(load_runs(run_dirs=[str(tmp_path / "link"), str(newer)]).runs.run_dir) == [str(tmp_path / "link")]
    # within the given list, the twin logic stands: the first started of the two is kept
    both = load_runs(run_dirs=[str(newer), str(root / "older")])
    assert list(both.runs.run_dir) == [str(root / "older")]
    assert "duplicate of" in both.problems_frame.set_index("run_dir").problem[str(newer)]
    with pytest.raises(TypeError):
        load_runs(root, run_dirs=[str(newer)])
    with pytest.raises(TypeError):
        load_runs()
