"""What a resumed run records: the same metrics as an uninterrupted run (oscillation records
included), the provenance of every segment, and no field of an earlier stop once it finished."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.conftest import read_metrics, read_run, run_train

TIMING = ("epoch_time_s", "images_per_s", "data_wait_s", "wall_time_s")
OSC = ["trainer.deterministic=true", "model.drop_rate=0.1", "trainer.epochs=2", "trainer.oscillation_every=5"]


def _comparable(run_dir):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def osc_reference(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("osc") / "reference"
    res = run_train(OSC, env, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("fault", ["step@32", "step@29:TERM"])
def test_resume_mid_window_keeps_every_oscillation_record(tmp_path, env, osc_reference, fault):
    """Killed at step 32 (22 steps per epoch): the resume starts from the step-22 checkpoint, inside
    the window of steps 21-25; stopped by SIGTERM at step 29, inside the window 26-30. Both windows'
    records are written, equal to the uninterrupted run's, and so is everything else."""
    run_dir = tmp_path / "run"
    first = run_train(OSC, dict(env, ADAREM_FAULT=fault), run_dir)
    assert first.returncode in (-signal.SIGKILL, 75), first.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["oscillation"]["start"] is not None  # the checkpoint fell inside a window
    resumed = run_train(OSC, env, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _comparable(osc_reference), _comparable(run_dir)
    assert [m["step"] for m in got if m["type"] == "oscillation"] == list(range(5, 45, 5))
    assert got == want
    a = torch.load(osc_reference / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
