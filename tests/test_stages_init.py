"""Weight inits: empirical std within 5% of theory on a 1000x1000 layer, biases zero, seeded."""
import math

import pytest
import torch
from torch import nn

from dlopt import Model

from dlopt.ml import init as init_mod

from dlopt.ml import models

N = 1000
THEORY = {  # std of each weight entry for a fan_in = fan_out = N layer
    "xavier_uniform": math.sqrt(2 / (N + N)),
    "xavier_normal": math.sqrt(2 / (N + N)),
    "kaiming_uniform": math.sqrt(2 / N),  # He, gain sqrt(2) for ReLU
    "kaiming_normal": math.sqrt(2 / N),
    "orthogonal": 1 / math.sqrt(N),  # orthonormal rows: each row's squares sum to 1
    "normal_fan_in": 1 / math.sqrt(N),  # LeCun normal
}


def test_theory_covers_the_catalog():
    assert set(THEORY) == set(init_mod.INITS)


@pytest.mark.parametrize("name", sorted(THEORY))
def test_std_within_5_percent_and_biases_zero(name):
    torch.manual_seed(0)
    layer = nn.Linear(N, N)
    init_mod.apply(nn.Sequential(layer), name)
    w = layer.weight.detach()
    assert w.std().item() == pytest.approx(THEORY[name], rel=0.05)
    assert abs(w.mean().item()) < 0.05 * THEORY[name]
    assert torch.count_nonzero(layer.bias) == 0


def test_orthogonal_is_orthogonal():
    torch.manual_seed(0)
    layer = nn.Linear(N, N)
    init_mod.apply(nn.Sequential(layer), "orthogonal")
    w = layer.weight.detach().double()
    assert torch.allclose(w @ w.T, torch.eye(N, dtype=torch.float64), atol=1e-4)


def test_xavier_uses_fan_out_and_conv_fans():
    torch.manual_seed(0)
    layer = nn.Linear(1000, 250)  # weight 250 x 1000: fan_in 1000, fan_out 250
    init_mod.apply(nn.Sequential(layer), "xavier_normal")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 1250), rel=0.05)
    conv = nn.Conv2d(64, 128, 3)  # fan_in = 64 * 9
    init_mod.apply(nn.Sequential(conv), "normal_fan_in")
    assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(64 * 9), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def build(seed: int, init: str, arch: str = "mlp"):
    torch.manual_seed(seed)  # as train.loop.fit does before building, on every rank
    model = models.build(Model(arch=arch, hidden=[64, 32], init=init), (64,), 10)
    return init_mod.apply(model, init)


@pytest.mark.parametrize("name", sorted(THEORY))
def test_same_seed_same_weights_on_every_build(name):
    a, b, c = build(7, name).state_dict(), build(7, name).state_dict(), build(8, name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


@pytest.mark.parametrize("arch", ["lenet5", "cnn", "resnet"])
def test_conv_models_seeded_and_biases_zero(arch):
    a, b = build(3, "kaiming_normal", arch), build(3, "kaiming_normal", arch)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for m in a.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
