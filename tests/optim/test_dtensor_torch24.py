"""AdaRem refuses DTensor parameters (3c975a0) also with torch 2.4, which pyproject allows
(torch>=2.4): there DTensor lives in torch.distributed._tensor only (public torch.distributed.tensor
has it from 2.5). The test lays the modules out as torch 2.4 does, with a stand-in DTensor class."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from adarem.optim import AdaRem


class _DTensor(torch.Tensor):
    pass


def test_a_dtensor_of_torch_2_4_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.distributed.tensor", types.ModuleType("torch.distributed.tensor"))
    old = types.ModuleType("torch.distributed._tensor")
    old.DTensor = _DTensor
    monkeypatch.setitem(sys.modules, "torch.distributed._tensor", old)
    p = torch.Tensor._make_subclass(_DTensor, torch.zeros(4), True)
    with pytest.raises(ValueError, match=r"does not support DTensor .*shape \(4,\).*DDP"):
        AdaRem([p])
    AdaRem([torch.nn.Parameter(torch.zeros(4))])  # a plain tensor still is taken
