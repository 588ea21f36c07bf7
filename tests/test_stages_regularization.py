"""L1/L2 penalties and their gradients equal the formulas (weights only); clipping; early stopping."""
import pytest
import torch
from torch import nn

from dlopt import Experiment, Model, Optimizer, Regularization, Search
from dlopt.stages import State, catalog
from dlopt.stages.regularization import (EarlyStopping, GradClip, Penalty, l1_l2_penalty,
                                         should_stop, weight_params)
from dlopt.train.loop import fit


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def test_weight_params_are_weights_not_biases():
    m = small_model()
    assert [p.shape for p in weight_params(m)] == [(4, 5), (3, 4)]


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.001), (0.03, 0.02)])
def test_penalty_value_and_gradient_equal_formulas(l1, l2):
    m = small_model()
    w1, b1, w2, b2 = m[0].weight, m[0].bias, m[2].weight, m[2].bias
    penalty = l1_l2_penalty(weight_params(m), l1, l2)
    expected = sum(l1 * w.abs().sum().item() + l2 * (w ** 2).sum().item() for w in (w1, w2))
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for w in (w1, w2):  # d/dW (l1 |W| + l2 W^2) = l1 sign(W) + 2 l2 W
        assert torch.allclose(w.grad, l1 * torch.sign(w.detach()) + 2 * l2 * w.detach(), atol=1e-7)
    for b in (b1, b2):  # biases carry no penalty
        assert b.grad is None or torch.count_nonzero(b.grad) == 0


def test_penalty_stage_adds_exactly_the_penalty_to_the_loss():
    m = small_model()
    state = State(spec=None, model=m, loss=torch.tensor(1.5))
    Penalty(0.01, 0.001).run("loss", state)
    assert state.loss.item() == pytest.approx(1.5 + l1_l2_penalty(weight_params(m), 0.01, 0.001).item())


def test_l2_penalty_shrinks_weights_in_training():
    def final_norm(l2):
        spec = Experiment(name="r", epochs=3, model=Model(hidden=[32]),
                          optimizer=Optimizer(name="sgd", lr=0.05),
                          regularization=Regularization(l2=l2))
        state = fit(spec, lambda m, w=None: None)
        return sum(w.pow(2).sum().item() for w in weight_params(state.model))
    assert final_norm(0.05) < 0.8 * final_norm(0.0)


def grads(m):
    x = torch.randn(8, 5) * 10
    m(x).pow(2).sum().backward()
    return [p.grad for p in m.parameters()]


def test_grad_clip_by_norm_and_by_value():
    m = small_model()
    grads(m)
    state = State(spec=None, model=m)
    GradClip(max_norm=0.5).run("after_backward", state)
    total = torch.norm(torch.stack([p.grad.norm() for p in m.parameters()]))
    assert total.item() == pytest.approx(0.5, rel=1e-4)
    m = small_model()
    grads(m)
    GradClip(max_value=0.01).run("after_backward", State(spec=None, model=m))
    assert max(p.grad.abs().max().item() for p in m.parameters()) <= 0.01 + 1e-9


def test_should_stop_once_best_is_patience_epochs_old():
    assert not should_stop([0.5, 0.6, 0.7], 2, "max")
    assert not should_stop([0.5, 0.6, 0.7, 0.65], 2, "max")
    assert should_stop([0.5, 0.6, 0.7, 0.65, 0.69], 2, "max")
    assert should_stop([1.0, 0.9, 0.9, 0.9], 2, "min")  # ties are not improvements
    assert not should_stop([1.0, 0.9, 0.95, 0.8], 2, "min")


def test_early_stopping_stage_stops_at_the_right_epoch():
    stage = EarlyStopping("val_accuracy", "max", patience=2)
    history = [0.5, 0.6, 0.7, 0.65, 0.69, 0.9, 0.95]
    stopped_at = None
    for epoch, value in enumerate(history, start=1):
        state = State(spec=None, model=None, metrics={"val_accuracy": value})
        stage.run("epoch_end", state)
        if state.stop:
            stopped_at = epoch
            break
    assert stopped_at == 5  # best at epoch 3, no improvement in epochs 4 and 5
    restored = EarlyStopping("val_accuracy", "max", patience=2)
    restored.load_state_dict(stage.state_dict())
    assert restored.history == history[:5]


class Frozen(torch.optim.Optimizer):
    """A custom optimizer (by import path) that never changes the weights."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        return None


def test_early_stopping_in_the_loop_stops_after_patience_epochs():
    """Frozen weights: val metric never improves after epoch 1, so patience 3 stops at epoch 4."""
    spec = Experiment(name="es", epochs=10, model=Model(hidden=[8]),
                      optimizer=Optimizer(name=f"{__name__}:Frozen", lr=0.1),
                      regularization=Regularization(early_stopping_patience=3),
                      search=Search(metric="val_loss", mode="min"))
    reports = []
    fit(spec, lambda m, w=None: reports.append(m))
    assert [m["epoch"] for m in reports if not m.get("final")] == [1, 2, 3, 4]
    assert reports[-1]["final"] == 1


def test_catalog_orders_regularization_stages():
    spec = Experiment(name="c", regularization=Regularization(
        l1=0.1, grad_clip_value=1.0, early_stopping_patience=2))
    assert [s.name for s in catalog.build(spec)] == ["penalty", "grad_clip", "early_stopping"]


def test_label_smoothing_loss_equals_formula():
    from dlopt.train.loop import loss_function

    torch.manual_seed(0)
    logits, y, eps = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), 0.1
    logp = logits.log_softmax(1)
    # (1 - eps) * NLL of the true class + eps * mean over classes of -log p
    expected = ((1 - eps) * -logp[torch.arange(6), y] + eps * -logp.mean(1)).mean()
    assert loss_function("classification", eps)(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dropout_in_the_mlp_is_active_in_training_only():
    from dlopt.ml import models

    m = models.build(Model(hidden=[256], dropout=0.5), (64,), 10)
    assert [mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)] == [0.5]
    x = torch.randn(4, 64)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))
