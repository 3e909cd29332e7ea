"""Models by name: any timm model, ``torchvision.<name>`` for torchvision's, plus ``small_cnn``.

``small_cnn`` and ``two_conv_net`` are registered in timm's registry, so they are built by the same
``timm.create_model`` call as ResNet-50; they exist so that whole optimizer comparisons run on 2
CPU cores.
"""

from __future__ import annotations

import difflib
import inspect
import warnings

import timm
import torch
from torch import nn
from timm.layers import convert_sync_batchnorm
from timm.models import register_model

from adarem.config import ConfigError


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers (two downsamplings), global pooling, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.0):
        super().__init__()

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_chans, width, 1), *block(width, width, 1),
            *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
        )
        # x.mean((2, 3)) rather than nn.AdaptiveAvgPool2d: its CUDA backward has no deterministic
        # kernel, so trainer.deterministic=true (exact resume) would refuse to run on a GPU.
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.features(x).mean((2, 3))))


def _own(kwargs: dict) -> dict:
    """The model's own arguments: timm's create_model also passes its pretrained-config keys,
    which these models do not use. Any other key reaches the model, and an unknown one (a typo in
    model.kwargs) fails there instead of being ignored."""
    return {k: v for k, v in kwargs.items() if k not in _TIMM_KEYS}


# create_model's own named arguments (pretrained_cfg, cache_dir, ...), which it passes on
_TIMM_KEYS = frozenset(k for k, p in inspect.signature(timm.create_model).parameters.items()
                       if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY)


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ConfigError("model small_cnn has no pretrained weights; set model.pretrained=false")
    return SmallCNN(**_own(kwargs))


class TwoConvNet(nn.Module):
    """The classic 2-conv + dense network of the Fashion-MNIST benchmarks (public references put
    such networks at 6.6-8.4 % test error): two 5x5 conv-BN-ReLU-maxpool stages (``width``,
    2 x ``width`` channels), a ``hidden``-unit dense layer with BN and dropout, a linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, hidden: int = 128,
                 drop_rate: float = 0.0, image_size: int = 28):
        super().__init__()

        def stage(cin, cout):
            return [nn.Conv2d(cin, cout, 5, 1, 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2)]

        self.features = nn.Sequential(*stage(in_chans, width), *stage(width, 2 * width), nn.Flatten())
        side = image_size // 4
        self.dense = nn.Sequential(nn.Linear(2 * width * side * side, hidden, bias=False), nn.BatchNorm1d(hidden),
                                   nn.ReLU(inplace=True), nn.Dropout(drop_rate))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.dense(self.features(x)))


@register_model
def two_conv_net(pretrained: bool = False, **kwargs) -> TwoConvNet:
    if pretrained:
        raise ConfigError("model two_conv_net has no pretrained weights; set model.pretrained=false")
    return TwoConvNet(**_own(kwargs))


def build_model(name: str, num_classes: int, in_chans: int, pretrained: bool = False,
                drop_rate: float = 0.0, kwargs: dict | None = None) -> nn.Module:
    """Build ``name`` with the dataset's number of classes and input channels."""
    if name.startswith("torchvision."):
        import torchvision

        tv_name = name.split(".", 1)[1]
        available = torchvision.models.list_models(module=torchvision.models)
        if tv_name not in available:
            close = difflib.get_close_matches(tv_name, available, n=5)
            raise ConfigError(f"unknown torchvision model {tv_name!r}; close matches: {close or 'none'}")
        if in_chans != 3:
            raise ConfigError(f"torchvision model {tv_name!r} takes 3-channel input; "
                              f"use a timm model for in_chans={in_chans}")
        # model.kwargs and model.drop_rate reach the builder (torchvision calls its drop rate
        # ``dropout``): nothing the record says the model was built with is left out, and a builder's
        # own default dropout (0.2 for MobileNet, 0.5 for VGG...) never replaces model.drop_rate=0.
        # Without pretrained weights the builder makes the num_classes head itself (every head: an
        # auxiliary one too, a convolutional one such as SqueezeNet's).
        kw, optional = dict(kwargs or {}), {}
        if drop_rate:
            kw["dropout"] = drop_rate  # required: refused below where the builder has no dropout
        elif "dropout" not in kw:
            optional["dropout"] = 0.0  # where the builder has one
        if not pretrained and "aux_logits" not in kw:
            # GoogLeNet and Inception v3 without their auxiliary heads, as their pretrained builds are:
            # in training they return (logits, aux logits), which the trainer's loss cannot take
            optional["aux_logits"] = False
        if not pretrained and "init_weights" not in kw:
            # GoogLeNet and Inception v3 warn that their default initialisation will change in a later
            # torchvision; asking for today's (True, also VGG's default) keeps a seed's weights the same
            optional["init_weights"] = True
        try:
            if pretrained:
                model = _torchvision_build(tv_name, "DEFAULT", kw, optional)
                if num_classes != 1000:
                    _replace_classifier(model, num_classes)
            else:
                model = _torchvision_build(tv_name, None, {**kw, "num_classes": num_classes}, optional)
        except TypeError as exc:
            if drop_rate and "dropout" in str(exc) and "dropout" not in (kwargs or {}):
                raise ConfigError(f"torchvision model {tv_name!r} has no dropout argument, so model.drop_rate="
                                  f"{drop_rate} cannot be applied; set model.drop_rate=0 (or use a timm model)") from None
            raise ConfigError(f"torchvision model {tv_name!r} rejects model.kwargs={kwargs or {}}: {exc}") from None
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise ConfigError(f"torchvision model {tv_name!r} cannot be built with model.kwargs={kwargs or {}} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
        if getattr(model, "aux_logits", False):
            raise ConfigError(f"torchvision model {tv_name!r} with auxiliary heads returns several outputs in "
                              f"training; the trainer takes one tensor of logits: drop aux_logits from model.kwargs")
        return model
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"unknown model {name!r}; close matches: {close or 'none'} "
                          f"(any timm model name, or torchvision.<name>)")
    try:
        with warnings.catch_warnings():  # a zero width: refused by check_input_fits in one line, no warning
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors", category=UserWarning)
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                     in_chans=in_chans, drop_rate=drop_rate, **(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"model {name!r} rejects model.kwargs={kwargs}: {exc}") from None
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError, IndexError) as exc:  # width=-5, ...
        raise ConfigError(f"model {name!r} cannot be built with model.kwargs={kwargs or {}} "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None


def _torchvision_build(tv_name: str, weights, kw: dict, optional: dict) -> nn.Module:
    """torchvision's ``tv_name`` built with ``kw`` and those of ``optional`` that its builder takes.
    A builder refuses an argument it does not take when it is called, before any initialisation,
    so the weights are those of a build without it."""
    import torchvision

    optional = dict(optional)
    while True:
        try:
            return torchvision.models.get_model(tv_name, weights=weights, **kw, **optional)
        except TypeError as exc:
            refused = [k for k in optional if f"'{k}'" in str(exc)]
            if not refused:
                raise
            del optional[refused[0]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_input_fits(model: nn.Module, name: str, in_chans: int, image_size: int, num_classes: int,
                     kwargs: dict | None = None) -> None:
    """One forward pass of a single blank image of the data's size, in eval mode and without
    gradients (no state changes, no random draws kept), so that a model that does not fit the
    input (a fixed-size ViT on 16x16 images, two_conv_net's dense layer sized for 28x28, a zero
    width) is refused in one line at set-up, before anything is recorded, instead of failing at
    its first training step."""
    was_training = model.training
    shape = f"{in_chans}x{image_size}x{image_size}"
    extra = f" with model.kwargs={kwargs}" if kwargs else ""
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError, ZeroDivisionError) as exc:
        raise ConfigError(f"model {name!r}{extra} does not fit the input images ({shape}: data.in_chans, "
                          f"data.image_size={image_size}): {type(exc).__name__}: {_first_line(exc)}; choose a model or "
                          f"model.kwargs that fit this input") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name!r}{extra} gives output {got} for one {shape} image, not (1, {num_classes}) "
                          f"logits for the data's {num_classes} classes")


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer of a torchvision classifier for one with ``num_classes`` outputs."""
    for parent in reversed(list(model.modules())):
        for child_name, child in reversed(list(parent.named_children())):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, nn.Linear(child.in_features, num_classes))
                return
    raise ConfigError(f"cannot find a Linear classifier in {type(model).__name__} to resize")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer as its SyncBatchNorm counterpart (trainer.sync_bn). timm's converter,
    not torch's: timm's BatchNormAct2d (MobileNetV2, EfficientNet, ...) runs its activation inside
    the norm layer, and torch's converter would make it a plain SyncBatchNorm that never calls it."""
    return convert_sync_batchnorm(model)


__all__ = ["build_model", "check_input_fits", "count_parameters", "to_sync_batchnorm", "SmallCNN"]
