import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from dlopt.stages.pruning.allocation import allocate, kept, layer_masks, levels_for, sensitivity

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


def test_sensitivity_measures_each_layer_alone_and_restores_its_mask():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(32, 8)
    target = b(a(x)).detach()
    for m in (a, b):
        prune.identity(m, "weight")  # the stage's reparametrization (weight_orig, weight_mask)
    masks = [a.weight_mask.clone(), b.weight_mask.clone()]
    seen = []

    def evaluate():
        seen.append((float(a.weight_mask.mean()), float(b.weight_mask.mean())))
        with torch.no_grad():
            return -float(((b(a(x)) - target) ** 2).mean())

    table = sensitivity([a, b], [0.5, 0.9], evaluate)
    assert all(row[0.9] >= row[0.5] >= 0 for row in table)
    # baseline, then a pruned alone (b intact), then b alone (a restored)
    assert seen == [(1.0, 1.0), (0.5, 1.0), (6 / 64, 1.0), (1.0, 0.5), (1.0, 6 / 64)]
    assert torch.equal(a.weight_mask, masks[0]) and torch.equal(b.weight_mask, masks[1])


def test_layer_masks_reach_each_layers_own_sparsity_and_only_grow():
    torch.manual_seed(0)
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)
    for m in (a, b):
        prune.identity(m, "weight")
    first = layer_masks([a, b], [0.3, 0.8])
    assert [int(m.sum()) for m in first] == [70, 20]
    a.weight_mask.copy_(first[0])
    grown = layer_masks([a], [0.6])[0]
    assert int(grown.sum()) == 40 and bool((grown <= first[0]).all())


def test_levels_include_the_budget():
    assert 0.93 in levels_for(0.93) and levels_for(0.9) == sorted(set(levels_for(0.9)))
