"""Hostile review (helper h2) of compare.py's arguments: each test fails on the code before its fix."""

from __future__ import annotations

import pytest

from tests.protocol.test_compare_prelaunch import QUICK, nothing_written, refused


@pytest.mark.parametrize("bad", ["lr_span=inf", "lr_step=inf", "lr_span=-inf"])
def test_an_infinite_lr_span_or_step_is_one_line(capsys, tmp_path, bad):
    """lr_span=inf was an OverflowError traceback (round(inf)); lr_step=inf was refused as 'not a
    whole number of lr_step=inf steps (0)'."""
    key, value = bad.split("=")
    line = refused(capsys, [*[a for a in QUICK if not a.startswith("lr_grid")], bad, "dry_run=true",
                            f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}"])
    assert f"{key}={float(value)}" in line and "finite" in line, line
    nothing_written(tmp_path)
