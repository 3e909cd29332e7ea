"""Models as the record says they were built: torchvision models get model.drop_rate and model.kwargs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adarem.config import ConfigError
from adarem.models import build_model, check_input_fits


def test_a_torchvision_model_gets_the_drop_rate_and_kwargs_it_is_recorded_with():
    default = build_model("torchvision.mobilenet_v2", 10, 3)
    model = build_model("torchvision.mobilenet_v2", 10, 3, drop_rate=0.3, kwargs={"width_mult": 0.5})
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert model.features[0][0].out_channels < default.features[0][0].out_channels
    assert model.classifier[-1].out_features == 10
    # model.drop_rate=0 is no dropout, not the builder's default (0.2 here) under a record saying 0
    assert [m.p for m in default.modules() if isinstance(m, nn.Dropout)] == [0.0]


def test_a_torchvision_model_without_dropout_refuses_a_drop_rate_in_one_line():
    with pytest.raises(ConfigError, match=r"shufflenet_v2_x1_0.*model.drop_rate=0.3.*set model.drop_rate=0"):
        build_model("torchvision.shufflenet_v2_x1_0", 10, 3, drop_rate=0.3)
    with pytest.raises(ConfigError, match=r"rejects model.kwargs=\{'no_such': 1\}"):
        build_model("torchvision.shufflenet_v2_x1_0", 10, 3, kwargs={"no_such": 1})


def test_a_torchvision_model_whose_head_is_not_linear_gets_num_classes():
    model = build_model("torchvision.squeezenet1_1", 7, 3)  # a 1x1 convolution head
    check_input_fits(model, "torchvision.squeezenet1_1", 3, 64, 7)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 80)])
def test_googlenet_and_inception_train_on_one_tensor_of_logits(name, size):
    model = build_model(f"torchvision.{name}", 5, 3)
    check_input_fits(model, name, 3, size, 5)
    out = model.train()(torch.zeros(2, 3, size, size))  # the trainer's cross_entropy takes a tensor
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    with pytest.raises(ConfigError, match=r"auxiliary heads.*drop aux_logits from model.kwargs"):
        build_model(f"torchvision.{name}", 5, 3, kwargs={"aux_logits": True})


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_googlenet_and_inception_initialisation_is_pinned(name):
    """torchvision warns that these builders' default initialisation will change: the suite asks for
    today's (init_weights=True) so that a seed gives the same weights under a later torchvision."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = build_model(f"torchvision.{name}", 10, 3)
    assert model.fc.out_features == 10
