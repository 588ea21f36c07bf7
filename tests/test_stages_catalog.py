"""Every catalog name the spec accepts builds on the torch side; unknown names fail validation
listing the valid ones; custom components by import path."""
import typing

import pytest
import torch
from pydantic import ValidationError

from dlopt import Data, Experiment, Model, Optimizer, Schedule
from dlopt.ml import data
from dlopt.ml import init as init_mod
from dlopt.ml import models, optim, schedules
from dlopt.spec import StageSpec
from dlopt.spec import fields as spec_mod
from dlopt.stages import compression
from dlopt_testing import run_cli


def test_spec_names_equal_torch_side_catalog_keys():
    assert set(spec_mod.OPTIMIZERS) == set(optim.OPTIMIZERS)
    assert set(spec_mod.SCHEDULES) == set(schedules.SCHEDULES)
    assert set(spec_mod.INITS) == {"default", *init_mod.INITS}
    assert set(spec_mod.ARCHS) == set(models.MODELS)  # one catalog per kind
    assert set(spec_mod.DATASETS) == set(data.DATASETS)
    stage_specs = typing.get_args(typing.get_args(StageSpec)[0])
    assert {s.model_fields["stage"].default for s in stage_specs} == set(compression.STAGES)
    assert set(spec_mod.ACTIVATIONS) == set(models.ACTIVATIONS)


@pytest.mark.parametrize("arch", spec_mod.ARCHS)
@pytest.mark.parametrize("shape", [(64,), (1, 28, 28), (3, 32, 32)])
def test_every_arch_builds_and_runs(arch, shape):
    torch.manual_seed(0)
    model = models.build(Model(arch=arch, hidden=[16], dropout=0.1), shape, 10)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("activation", spec_mod.ACTIVATIONS)
def test_every_activation_builds(activation):
    model = models.build(Model(arch="cnn", activation=activation), (64,), 10)
    assert model(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", spec_mod.INITS)
def test_every_init_applies(name):
    model = init_mod.apply(models.build(Model(arch="lenet5"), (1, 28, 28), 10), name)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", spec_mod.SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 1])
def test_every_schedule_builds_and_steps_through_a_run(name, warmup):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    spec = Schedule(name=name, warmup_epochs=warmup, milestones=[2], step_size=2)
    sched, every = schedules.build(spec, opt, 4, 3)
    for _ in range(12 if every == "step" else 4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] >= 0


def test_lenet5_has_the_classic_400_features_on_28x28():
    model = models.build(Model(arch="lenet5"), (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 10)]


def test_cnn_is_32_64_128_then_dense_128():
    model = models.build(Model(arch="cnn"), (1, 28, 28), 10)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [32, 64, 128] and linears == [128, 10]


def test_conv_on_non_square_flat_input_is_a_clear_error():
    with pytest.raises(ValueError, match="square number of flat features"):
        models.build(Model(arch="cnn"), (20,), 3)


def custom_model(spec, input_shape, out_features):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, out_features))


def test_custom_model_by_import_path():
    model = models.build(Model(arch=f"{__name__}:custom_model"), (64,), 10)
    assert isinstance(model[1], torch.nn.Linear) and model[1].out_features == 10


def test_cnn_trains_on_digits_viewed_as_8x8_images():
    from dlopt.train.loop import fit

    spec = Experiment(name="c", epochs=3, model=Model(arch="cnn", init="kaiming_normal"),
                      optimizer=Optimizer(name="adam", lr=3e-3), data=Data(batch_size=64))
    reports = []
    fit(spec, lambda m, w=None: reports.append(m))
    assert reports[-1]["val_accuracy"] > 0.85  # 3 epochs; chance is 0.1


UNKNOWN = [
    ("optimizer", {"name": "adamax"}, "optimizer.name", spec_mod.OPTIMIZERS),
    ("schedule", {"name": "poly"}, "schedule.name", spec_mod.SCHEDULES),
    ("model", {"init": "he"}, "model.init", spec_mod.INITS),
    ("model", {"arch": "vgg"}, "model.arch", spec_mod.ARCHS),
    ("data", {"dataset": "imagenet"}, "data.dataset", spec_mod.DATASETS),
]


@pytest.mark.parametrize("section,value,path,valid", UNKNOWN, ids=[u[2] for u in UNKNOWN])
def test_unknown_name_fails_validation_listing_valid_names(section, value, path, valid):
    with pytest.raises(ValidationError) as err:
        Experiment.model_validate({"name": "x", section: value})
    (error,) = err.value.errors()
    assert ".".join(str(p) for p in error["loc"]) == path
    for name in valid:
        assert name in error["msg"]


def test_cli_validate_unknown_optimizer_exit_2_names_field_and_choices(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("from dlopt import Experiment, Optimizer\n"
                 "experiment = Experiment(name='bad', optimizer=Optimizer(name='adamax'))\n")
    out = run_cli("validate", str(f))
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "optimizer.name" in text and "rmsprop" in text and "adagrad" in text


def test_16_mixed_without_gpu_is_a_validation_error():
    with pytest.raises(ValidationError, match="16-mixed"):
        Experiment(name="p", precision="16-mixed")


def xor_dataset(spec, seed):
    """A custom dataset by import path: (x, y, task) as the built-in ones return."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (400, 2)).astype(np.float32)
    return x, ((x[:, 0] * x[:, 1]) > 0).astype(np.int64), "classification"


def test_custom_dataset_by_import_path_trains():
    from dlopt.train.loop import fit

    spec = Experiment(name="x", epochs=15, data=Data(dataset=f"{__name__}:xor_dataset", batch_size=32),
                      model=Model(hidden=[32, 32]), optimizer=Optimizer(name="adam", lr=1e-2))
    reports = []
    state = fit(spec, lambda m, w=None: reports.append(m))
    assert state.datasets.input_shape == (2,) and state.datasets.num_classes == 2
    assert reports[-1]["val_accuracy"] > 0.9
