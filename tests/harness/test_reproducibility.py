"""Seeding sets the process's determinism each time (compare.py trains many runs in one process)."""

from __future__ import annotations

import torch

from adarem.reproducibility import seed_everything


def test_a_run_after_a_deterministic_one_gets_the_mode_it_asks_for():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        seed_everything(0, True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        seed_everything(0, False)  # it stayed deterministic: the record said false
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        seed_everything(0, True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def test_ranks_draw_from_their_own_streams_and_rank_0_is_a_single_process():
    seed_everything(3, False, 0)
    single = torch.rand(4)
    seed_everything(3, False, 1)
    other = torch.rand(4)
    seed_everything(3, False)
    assert torch.equal(torch.rand(4), single) and not torch.equal(single, other)
