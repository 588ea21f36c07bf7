import pytest
import torch
from torch import nn

from dlopt.stages.pruning.allocation import allocate, kept, sensitivity

LEVELS = [0.5, 0.8, 0.9, 0.95, 0.98]


def test_budget_met_and_sensitive_layer_pruned_less():
    sizes = [1000, 1000, 100]
    drops = [{lv: 10 * lv ** 4 for lv in LEVELS},      # sensitive
             {lv: 0.1 * lv ** 4 for lv in LEVELS},     # robust
             {lv: 1.0 * lv ** 4 for lv in LEVELS}]
    chosen = allocate(sizes, drops, 0.9)
    pruned = sum(s * p for s, p in zip(sizes, chosen))
    assert pruned >= 0.9 * sum(sizes)
    assert chosen[0] < chosen[1]
    assert chosen == allocate(sizes, drops, 0.9)
    assert kept(sizes, chosen) == [s - round(s * p) for s, p in zip(sizes, chosen)]


@pytest.mark.parametrize("budget", [0.5, 0.7, 0.85, 0.95])
def test_budget_met_at_every_target(budget):
    sizes = [784 * 300, 300 * 100, 100 * 10]
    drops = [{lv: lv ** 6 * w for lv in LEVELS} for w in (0.5, 2.0, 8.0)]
    chosen = allocate(sizes, drops, budget)
    assert sum(s * p for s, p in zip(sizes, chosen)) >= budget * sum(sizes)


def test_unreachable_budget_refused():
    with pytest.raises(ValueError):
        allocate([10, 10], [{0.5: 0.0}, {0.5: 0.0}], 0.9)


def test_sensitivity_measures_and_restores_weights():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(32, 8)
    target = b(a(x)).detach()
    before = [a.weight.detach().clone(), b.weight.detach().clone()]

    def evaluate():
        with torch.no_grad():
            return -float(((b(a(x)) - target) ** 2).mean())

    table = sensitivity([a, b], [0.5, 0.9], evaluate)
    assert all(row[0.9] >= row[0.5] >= 0 for row in table)
    assert torch.equal(a.weight, before[0]) and torch.equal(b.weight, before[1])
    assert not hasattr(a, "weight_mask")
