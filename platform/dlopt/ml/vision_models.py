"""Convolutional model builders: builder(spec.Model, input_shape, out_features).

Catalogued by name in `dlopt.ml.models.MODELS` (docs/architecture.md, "Catalogs"); kept
apart from the dense builders so each module stays small.
Every builder accepts an image shape (C, H, W) or flat features: a flat input of n = s*s
features is viewed as a 1 x s x s image (sklearn's digits: 64 -> 1x8x8), so the same
dataset tensors and saved-model metadata serve dense and conv models alike.
Layer sizes after the conv stack are measured with one dummy forward pass instead of
hand arithmetic, so each net accepts any image size its pooling allows.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dlopt.ml.components import ACTIVATIONS
from dlopt.spec import Model


def image_shape(input_shape) -> tuple[int, int, int]:
    """(C, H, W) for a conv net; flat square inputs become one channel."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0]:
            return (1, side, side)
    raise ValueError(f"a conv model needs an image input (C, H, W) or a square number of flat "
                     f"features; got input shape {shape}")


def _to_image(input_shape) -> nn.Module:
    shape = image_shape(input_shape)
    return nn.Identity() if tuple(input_shape) == shape else nn.Unflatten(1, shape)


def _flat_size(features: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *shape)).numel()


def _act(spec: Model) -> nn.Module:
    return ACTIVATIONS[spec.activation]()


def lenet5(spec: Model, input_shape, out_features: int) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) in its common MNIST form: 6 and 16 5x5 filters with
    2x2 pooling, then 120-84 dense. The first conv pads by 2 (28x28 -> 28x28 as in the
    usual MNIST variant); on images under 12 pixels (digits' 8x8) the second conv pads
    by 2 as well so the feature map does not vanish."""
    shape = image_shape(input_shape)
    pad2 = 0 if shape[1] >= 12 and shape[2] >= 12 else 2
    features = nn.Sequential(
        nn.Conv2d(shape[0], 6, 5, padding=2), _act(spec), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), _act(spec), nn.MaxPool2d(2), nn.Flatten())
    head: list[nn.Module] = [nn.Linear(_flat_size(features, shape), 120), _act(spec)]
    if spec.dropout > 0:
        head.append(nn.Dropout(spec.dropout))
    head += [nn.Linear(120, 84), _act(spec), nn.Linear(84, out_features)]
    return nn.Sequential(_to_image(input_shape), features, *head)


def cnn(spec: Model, input_shape, out_features: int) -> nn.Module:
    """The 3-conv CNN of the classic MNIST/Keras example: 3x3 convs with 32, 64 and 128
    filters, each followed by 2x2 max pooling, then dense 128 (dropout from the spec)."""
    shape = image_shape(input_shape)
    layers: list[nn.Module] = []
    channels = shape[0]
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1), _act(spec), nn.MaxPool2d(2)]
        channels = width
    features = nn.Sequential(*layers, nn.Flatten())
    head: list[nn.Module] = [nn.Linear(_flat_size(features, shape), 128), _act(spec)]
    if spec.dropout > 0:
        head.append(nn.Dropout(spec.dropout))
    head.append(nn.Linear(128, out_features))
    return nn.Sequential(_to_image(input_shape), features, *head)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = act
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem of 16 filters,
    three stages of 16-32-64 filters (strides 1-2-2), global average pooling, one linear
    layer. One block per stage (ResNet-8) keeps it trainable on CPU; `blocks` deepens it."""

    def __init__(self, spec: Model, input_shape, out_features: int, blocks: int = 1):
        super().__init__()
        shape = image_shape(input_shape)
        self.to_image = _to_image(input_shape)
        self.stem = nn.Sequential(nn.Conv2d(shape[0], 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), _act(spec))
        stages, c_in = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                stages.append(BasicBlock(c_in, width, stride if i == 0 else 1, _act(spec)))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(64, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.to_image(x)))
        return self.fc(self.dropout(self.pool(x)))


def resnet(spec: Model, input_shape, out_features: int) -> nn.Module:
    return ResNet(spec, input_shape, out_features)

