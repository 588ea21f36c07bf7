"""Structured pruning of residual nets through dependency groups (dlopt.ml.residual)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dlopt.ml import residual
from dlopt.ml.models import build
from dlopt.spec import Model


class TinyRes(nn.Module):
    """A user's model: two residual adds sharing one channel set, a 1x1 projection."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.proj = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.a(x))
        x = torch.relu(x + self.b(x))
        return self.head(self.proj(x).mean(dim=(2, 3)))


class Untraceable(TinyRes):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return super().forward(-x)


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _masked(dense, removed):
    """The dense model with the removed output channels zeroed (weights, biases, BN affine)."""
    masked = copy.deepcopy(dense)
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for name, idxs in removed.items():
            m = mods[name]
            for p in (m.weight, getattr(m, "bias", None)):
                if p is not None:
                    p[idxs] = 0
    return masked


def _models():
    torch.manual_seed(0)
    res = build(Model(arch="resnet"), (3, 16, 16), 10)
    return [(res, torch.randn(4, 3, 16, 16)), (TinyRes(), torch.randn(4, 3, 16, 16))]


@pytest.mark.parametrize("case", [0, 1], ids=["resnet", "custom"])
def test_pruned_is_smaller_and_equals_masked(case):
    dense, x = _models()[case]
    with torch.no_grad():
        _randomize_bn(dense)
    dense.eval()
    pruned = copy.deepcopy(dense)
    removed = residual.prune_channels(pruned, x, 0.5)
    assert removed
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned < 0.5 * n_dense
    pruned.eval()
    masked = _masked(dense, removed).eval()
    with torch.no_grad():
        out, ref = pruned(x), masked(x)
    assert out.shape == ref.shape == dense(x).shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ref, dense(x))  # the mask changed something: the test can fail


@pytest.mark.parametrize("case", [0, 1], ids=["resnet", "custom"])
def test_fit_rebuilds_pruned_shapes(case):
    dense, x = _models()[case]
    pruned = copy.deepcopy(dense)
    residual.prune_channels(pruned, x, 0.5)
    fresh = residual.fit(copy.deepcopy(dense), residual.shapes(pruned))
    fresh.load_state_dict(pruned.state_dict())
    pruned.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x))


def test_untraceable_model_refused_with_reason():
    with pytest.raises(ValueError, match="not torch.fx-traceable"):
        residual.prune_channels(Untraceable(), torch.randn(2, 3, 8, 8), 0.5)


class UpRes(nn.Module):
    """A transposed conv (weight: in, out, k, k) inside a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.skip = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.up(torch.relu(self.stem(x))) + self.skip(x))
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet", "custom", "transposed"])
def test_zeroed_plan_cuts_to_the_same_outputs(case):
    """zero_channels (the training masks) then cut with the same plan: the same forward."""
    torch.manual_seed(0)
    dense, x = (_models() + [(UpRes(), torch.randn(4, 3, 16, 16))])[case]
    with torch.no_grad():
        _randomize_bn(dense)
    dg = residual.graph(dense, x)
    roots = residual.plan(dense, x, 0.5, dg)
    residual.zero_channels(dense, residual.members(dense, dg, roots))
    dense.eval()
    cut = copy.deepcopy(dense)
    residual.cut(cut, x, roots)
    cut.eval()
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        torch.testing.assert_close(cut(x), dense(x), rtol=1e-4, atol=1e-5)
    # masks only grow: a higher ratio keeps every channel chosen before
    more = residual.plan(dense, x, 0.75, dg, roots)
    assert all(set(v) <= set(more[k]) for k, v in roots.items())
