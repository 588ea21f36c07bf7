"""Optimizers: every catalog name builds with its options, gd is full-batch, custom by import
path; bf16-mixed really trains on CPU."""
import torch

from dlopt import Data, Experiment, Model, Optimizer

from dlopt.ml import optim
from dlopt.train.loop import fit


def params():
    return torch.nn.Linear(3, 2).parameters()


def test_every_optimizer_builds_with_spec_options():
    built = {name: optim.build(Optimizer(name=name, lr=0.01, weight_decay=0.1,
                                         momentum=0.5 if name in ("sgd", "gd", "rmsprop") else 0.0),
                               params()) for name in optim.OPTIMIZERS}
    assert isinstance(built["gd"], torch.optim.SGD) and isinstance(built["sgd"], torch.optim.SGD)
    assert isinstance(built["adam"], torch.optim.Adam)
    assert isinstance(built["adamw"], torch.optim.AdamW)
    assert isinstance(built["rmsprop"], torch.optim.RMSprop)
    assert isinstance(built["adagrad"], torch.optim.Adagrad)
    for opt in built.values():
        assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1
    assert built["rmsprop"].defaults["momentum"] == 0.5


def test_sgd_momentum_and_nesterov():
    opt = optim.build(Optimizer(name="sgd", lr=0.1, momentum=0.9, nesterov=True), params())
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True


def test_adam_betas_and_adamw_decoupled_decay():
    opt = optim.build(Optimizer(name="adamw", lr=0.1, betas=(0.8, 0.99), weight_decay=0.5), params())
    assert opt.defaults["betas"] == (0.8, 0.99)
    # decoupled: with zero gradient, AdamW still shrinks w by lr * wd (Adam's L2 would not move it)
    w = torch.nn.Parameter(torch.ones(2))
    opt = optim.build(Optimizer(name="adamw", lr=0.1, weight_decay=0.5), [w])
    w.grad = torch.zeros(2)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2,), 1 - 0.1 * 0.5))


def test_custom_optimizer_by_import_path_gets_lr_and_kwargs():
    opt = optim.build(Optimizer(name="torch.optim:SGD", lr=0.2, kwargs={"dampening": 0.3}), params())
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["lr"] == 0.2 and opt.defaults["dampening"] == 0.3


def run(name, batch_size=64, epochs=2, lr=0.1, **kw):
    spec = Experiment(name="o", epochs=epochs, data=Data(dataset="digits", batch_size=batch_size),
                      model=Model(hidden=[32]), optimizer=Optimizer(name=name, lr=lr), **kw)
    reports = []
    state = fit(spec, lambda m, w=None: reports.append(m))
    return state, [m for m in reports if not m.get("final")]


def test_gd_is_full_batch_one_step_per_epoch():
    state, reports = run("gd", batch_size=7, epochs=3)  # batch_size is ignored by gd
    assert state.steps_per_epoch == 1 and state.step == 3
    n_train = len(state.datasets.train)
    sgd_state, _ = run("sgd", batch_size=64, epochs=1)
    assert sgd_state.steps_per_epoch == sgd_state.step == -(-n_train // 64)


def test_per_sample_sgd_takes_one_step_per_example():
    spec = Experiment(name="o", epochs=1, data=Data(dataset="linear_1d", batch_size=1),
                      model=Model(arch="linear"), optimizer=Optimizer(name="sgd", lr=0.01),
                      search={"metric": "val_loss", "mode": "min"})
    state = fit(spec, lambda m, w=None: None)
    assert state.step == len(state.datasets.train)


def test_bf16_mixed_trains_on_cpu():
    state, reports = run("adam", epochs=4, lr=0.01, precision="bf16-mixed")
    assert state.outputs.dtype == torch.bfloat16  # the forward really ran under bf16 autocast
    losses = [m["train_loss"] for m in reports]
    assert losses[-1] < 0.5 * losses[0]
    assert reports[-1]["val_accuracy"] > 0.85
