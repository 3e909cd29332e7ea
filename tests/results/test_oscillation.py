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


def definition_records(history: list[list[torch.Tensor]], every: int, window: int, names: list[str]) -> dict:
    """The docstring's definition, computed from the full weight history (history[s] = weights after
    step s, history[0] before the first): {record step: (flips, moved, efficiency sum, weights with
    a path) per tensor}, with torch.sign's convention (NaN has sign 0) and the path length summed in
    the weights' precision in step order, as the tracker accumulates it."""
    out = {}
    for t in range(1, len(history)):
        if t % every or t < 2 or t - window < 0:
            continue
        rows = []
        for i in range(len(names)):
            d1 = history[t - 1][i] - history[t - 2][i]
            d2 = history[t][i] - history[t - 1][i]
            s1, s2 = torch.sign(d1), torch.sign(d2)
            moved = (s1 != 0) & (s2 != 0)
            path = torch.zeros_like(d1)
            for s in range(t - window + 1, t + 1):
                path += (history[s][i] - history[s - 1][i]).abs()
            net = (history[t][i] - history[t - window][i]).abs()
            has = path > 0
            eff = torch.where(has, net / torch.where(has, path, torch.ones_like(path)), torch.zeros_like(path))
            rows.append((int(((s1 != s2) & moved).sum()), int(moved.sum()),
                         float(eff.clamp(max=1.0).sum(dtype=torch.float64)), int(has.sum())))
        out[t] = rows
    return out


@pytest.mark.parametrize("every,window", [(1, None), (2, None), (3, None), (10, None), (10, 3), (4, 2)])
def test_records_equal_the_definition_exactly_and_survive_a_resume_at_any_step(every, window):
    """Updates with zeros, signed zeros, subnormals, a NaN and an infinity: every record equals the
    definition computed from the weight history, bit for bit, and a tracker rebuilt from
    state_dict() at any step (a resumed run) writes the same records."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3)).to(memory_format=torch.channels_last)
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(1)
    steps = 36
    updates = []
    for s in range(1, steps + 1):
        step_updates = []
        for p in model.parameters():
            u = torch.randn(p.shape, generator=gen)
            u[torch.rand(p.shape, generator=gen) < 0.3] = 0.0
            u[torch.rand(p.shape, generator=gen) < 0.05] = -0.0
            if s % 7 == 0:
                u *= 1e-40  # subnormal moves, absorbed by most weights
            if s == 23:
                u.view(-1)[0] = float("nan")
            if s == 29:
                u.view(-1)[1] = float("inf")
            step_updates.append(u)
        updates.append(step_updates)
    for resume_every in (0, 1, 3):  # 0: never resumed; 1: a new tracker from the checkpoint after every step
        m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3))
        m.load_state_dict(model.state_dict())
        tracker = OscillationTracker(m, every, window)
        history = [[p.detach().clone() for p in m.parameters()]]
        records = {}
        for s, step_updates in enumerate(updates, start=1):
            tracker.before_step(s)
            with torch.no_grad():
                for p, u in zip(m.parameters(), step_updates):
                    p.add_(u)
            history.append([p.detach().clone() for p in m.parameters()])
            rec = tracker.after_step(s)
            if rec is not None:
                records[s] = rec
            if resume_every and s % resume_every == 0:
                state = tracker.state_dict()
                tracker = OscillationTracker(m, every, window)
                tracker.load_state_dict(state)
        expected = definition_records(history, every, tracker.window, names)
        assert sorted(records) == sorted(expected), (resume_every, sorted(records), sorted(expected))
        for t, rows in expected.items():
            rec = records[t]
            flips, moved = sum(r[0] for r in rows), sum(r[1] for r in rows)
            assert rec["flip_fraction"] == (flips / moved if moved else 0.0), (t, resume_every)
            for name, (f, mv, e, n) in zip(names, rows):
                assert rec["per_layer"][name] == (f / mv if mv else 0.0), (t, name)
                assert same(rec["per_layer_efficiency"][name], e / n if n else None), (t, name)
            n_path = sum(r[3] for r in rows)
            assert same(rec["path_efficiency"], sum(r[2] for r in rows) / n_path if n_path else None), t


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (an infinite move over an infinite path: inf / inf)."""
    return a == b or (a != a and b != b)


def test_a_model_cast_after_the_first_window_is_measured_in_its_new_precision():
    """The tracker keeps its buffers between windows; a model cast to float64 between windows gets
    float64 buffers (float32 ones rounded the weights: unmoved weights counted as moved)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3))
    names = [n for n, _ in model.named_parameters()]
    tracker = OscillationTracker(model, 5)
    history, records = [[p.detach().clone() for p in model.parameters()]], {}
    gen = torch.Generator().manual_seed(2)
    for s in range(1, 16):
        if s == 6:  # a window's first step
            model.to(torch.float64)
        tracker.before_step(s)
        with torch.no_grad():
            for p in model.parameters():
                u = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-9  # below float32's resolution
                u[torch.rand(p.shape, generator=gen) < 0.5] = 0.0
                p.add_(u.to(p.dtype))
        history.append([p.detach().clone() for p in model.parameters()])
        rec = tracker.after_step(s)
        if rec is not None:
            records[s] = rec
    expected = definition_records(history, 5, tracker.window, names)
    for t in (10, 15):
        flips, moved = sum(r[0] for r in expected[t]), sum(r[1] for r in expected[t])
        assert records[t]["flip_fraction"] == flips / moved
        n_path = sum(r[3] for r in expected[t])
        assert records[t]["path_efficiency"] == sum(r[2] for r in expected[t]) / n_path
