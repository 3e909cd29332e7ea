"""The oscillation tracker's path efficiency on hand-computable trajectories."""

from __future__ import annotations

import pytest
import torch

from adarem.oscillation import OscillationTracker


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(3))  # the moves are set by hand, per weight
        self.b = torch.nn.Parameter(torch.zeros(2))


def drive(moves_a, moves_b, every, window=None, first_step=1, device="cpu"):
    """Step s adds moves_a[s-1] to a and moves_b[s-1] to b (elementwise); returns the records."""
    model = Two().to(device)
    tracker = OscillationTracker(model, every, window)
    records = []
    for i, (ma, mb) in enumerate(zip(moves_a, moves_b)):
        step = first_step + i
        tracker.before_step(step)
        with torch.no_grad():
            model.a.add_(torch.tensor(ma, dtype=torch.float32, device=device))
            model.b.add_(torch.tensor(mb, dtype=torch.float32, device=device))
        rec = tracker.after_step(step)
        if rec:
            records.append(rec)
    return records


# weight a0: +1 -1 +1 -1 (back and forth), a1: +1 +1 +1 +1 (straight), a2: +1 +1 +1 -1 (net 2 of 4)
A = [[1, 1, 1], [-1, 1, 1], [1, 1, 1], [-1, 1, -1]]
B_STILL = [[0, 0]] * 4


def test_back_and_forth_is_zero_straight_is_one():
    (rec,) = drive(A, B_STILL, every=4)
    assert rec["step"] == 4 and rec["path_window"] == 4
    assert rec["per_layer_efficiency"]["a"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert rec["per_layer_efficiency"]["b"] is None  # never moved: no path, not "oscillating"
    assert rec["path_efficiency"] == pytest.approx(0.5)  # the mean over the 3 weights that moved
    # the flips (steps 3 -> 4) are unchanged: a0 and a2 flip, a1 does not; b did not move
    assert rec["flip_fraction"] == pytest.approx(2 / 3) and rec["per_layer"] == {"a": pytest.approx(2 / 3), "b": 0.0}


def test_overall_mean_weighs_every_moving_weight():
    b = [[0.5, 0.0], [0.5, 0.0], [0.5, 0.0], [0.5, 0.0]]  # b0 straight, b1 still
    (rec,) = drive(A, b, every=4)
    assert rec["per_layer_efficiency"]["b"] == pytest.approx(1.0)
    assert rec["path_efficiency"] == pytest.approx((0 + 1 + 0.5 + 1) / 4)


def test_windows_tile_the_run_and_odd_windows():
    moves = [[1, 1, 1], [-1, 1, 1]] * 6  # a0 alternates every step
    recs = drive(moves, [[0, 0]] * 12, every=3)
    assert [r["step"] for r in recs] == [3, 6, 9, 12]
    # over 3 steps an alternating weight nets 1 of 3; a1 and a2 go straight
    for r in recs:
        assert r["per_layer_efficiency"]["a"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    # a window shorter than the interval: steps 3-4 and 7-8 of every 4 (k = 2, even: a0 nets 0)
    recs = drive(moves[:8], [[0, 0]] * 8, every=4, window=2)
    assert [r["step"] for r in recs] == [4, 8] and all(r["path_window"] == 2 for r in recs)
    assert all(r["per_layer_efficiency"]["a"] == pytest.approx(2 / 3) for r in recs)


def test_window_is_at_least_two_and_at_most_every():
    model = Two()
    assert OscillationTracker(model, 10).window == 10
    assert OscillationTracker(model, 10, window=50).window == 10
    assert OscillationTracker(model, 10, window=1).window == 2
    assert OscillationTracker(model, 0).window == 0


def test_every_one_compares_consecutive_steps():
    moves = [[1, 1, 1], [-1, 1, 1]] * 3
    recs = drive(moves, [[0, 0]] * 6, every=1)
    assert [r["step"] for r in recs] == [2, 3, 4, 5, 6]  # step 1 has no previous update
    assert all(r["flip_fraction"] == pytest.approx(1 / 3) for r in recs)
    assert all(r["path_efficiency"] == pytest.approx(1.0) for r in recs)  # a 1-step path is straight


def test_a_window_entered_midway_is_skipped():
    moves = [[1, 1, 1], [-1, 1, 1]] * 4
    recs = drive(moves[2:], [[0, 0]] * 6, every=4, first_step=3)  # resumed at step 3
    assert [r["step"] for r in recs] == [8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_no_host_sync_between_records():
    model = Two().cuda()
    tracker = OscillationTracker(model, 4)
    for step in range(1, 9):
        torch.cuda.set_sync_debug_mode("error")
        try:
            tracker.before_step(step)
            with torch.no_grad():
                model.a.add_(1.0)
            if step % 4:
                assert tracker.after_step(step) is None
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if step % 4 == 0:
            assert tracker.after_step(step)["path_efficiency"] == pytest.approx(1.0)
