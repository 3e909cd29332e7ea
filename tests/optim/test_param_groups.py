"""Parameter groups by timm's rule: 1-D tensors and a model's no_weight_decay() names are not decayed."""

from __future__ import annotations

import torch
from torch import nn

from adarem.optim.factory import parameter_groups


class WithEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(4, 3))  # 2-D, but listed as not decayed
        self.fc = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)

    def no_weight_decay(self):
        return {"pos_embed"}


def test_no_weight_decay_names_and_1d_tensors_are_not_decayed():
    m = WithEmbedding()
    decay, no_decay = parameter_groups(m, 0.05, exclude_bias_and_norm=True)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(m.fc.weight)}
    assert ids(no_decay["params"]) == {id(m.pos_embed), id(m.fc.bias), id(m.norm.weight), id(m.norm.bias)}


def test_one_group_without_decay_or_exclusion():
    m = WithEmbedding()
    assert [len(g["params"]) for g in parameter_groups(m, 0.0, True)] == [5]
    assert [len(g["params"]) for g in parameter_groups(m, 0.05, False)] == [5]
