"""Augmentation (dlopt.stages.augment): each transform does what its name says, draws repeat
per (seed, rank, epoch, step), and only training batches are touched."""
import random

import pytest
import torch
import torch.nn.functional as F

from dlopt import Augment, Experiment, Model, Quantize, Regularization, tune
from dlopt.ml import data as data_mod
from dlopt.ml.vision_models import image_shape
from dlopt.spec import domains
from dlopt.spec.augmentation import IMAGE_SIDES
from dlopt.stages import augment
from dlopt.stages.augment import (BatchAugment, batch_seed, cut_box, cutmix, generator, mixup,
                                  one_hot, random_crop, random_flip)
from dlopt.train.loop import fit


def images(n=16, c=2, h=6, w=5, seed=0):
    torch.manual_seed(seed)
    return torch.rand(n, c, h, w) + 1  # every pixel >= 1: a padded zero is visible


def test_flip_mirrors_exactly_the_drawn_images():
    x = images()
    out = random_flip(x, generator(1, "cpu"))
    flipped = [bool((o == torch.flip(i, dims=[-1])).all()) for o, i in zip(out, x)]
    kept = [bool((o == i).all()) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(x)  # some of each, drawn per image
    assert torch.equal(out, random_flip(x, generator(1, "cpu")))  # same seed, same flips


def test_crop_is_a_shifted_window_with_zeros_let_in():
    x, pad = images(n=32), 2
    out = random_crop(x, pad, generator(3, "cpu"))
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4)
    shifts = set()
    for o, p in zip(out, padded):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(o, p[:, dy:dy + x.shape[2], dx:dx + x.shape[3]])]
        assert hits, "every output is a window of the padded image"
        shifts.add(hits[0])
        if hits[0] != (pad, pad):
            assert (o == 0).any()  # a shifted window lets padding zeros in
    assert len(shifts) > 3  # offsets drawn per image
    assert random_crop(x, 0, generator(3, "cpu")) is x


def test_mixup_mixes_inputs_and_labels_with_lam_in_unit_interval():
    x, y = images(n=8), torch.arange(8) % 3
    rng = random.Random(5)
    lam = rng.betavariate(0.4, 0.4)
    assert 0 <= lam <= 1
    perm = torch.randperm(8, generator=generator(5, "cpu"))
    mx, my = mixup(x, one_hot(y, 3), lam, perm)
    assert torch.allclose(mx, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(my.sum(1), torch.ones(8))  # still a distribution over classes
    assert torch.allclose(my, lam * F.one_hot(y, 3) + (1 - lam) * F.one_hot(y[perm], 3))


def test_cutmix_pastes_a_box_and_weights_labels_by_area():
    x, y = images(n=8, h=8, w=8), torch.arange(8) % 4
    perm = torch.roll(torch.arange(8), 1)
    box = cut_box(8, 8, 0.5, random.Random(2))
    top, bottom, left, right = box
    mx, my, lam = cutmix(x, one_hot(y, 4), box, perm)
    assert torch.equal(mx[:, :, top:bottom, left:right], x[perm][:, :, top:bottom, left:right])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[top:bottom, left:right] = False
    assert torch.equal(mx[:, :, outside], x[:, :, outside])
    assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 64)
    assert 0 < lam < 1
    assert torch.allclose(my, lam * F.one_hot(y, 4) + (1 - lam) * F.one_hot(y[perm], 4))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_loss_is_the_mixed_loss(smoothing):
    """The loop's unchanged cross entropy on mixed soft targets == lam*L(y_a) + (1-lam)*L(y_b)."""
    torch.manual_seed(0)
    out, ya, yb, lam = torch.randn(10, 4), torch.randint(0, 4, (10,)), torch.randint(0, 4, (10,)), 0.3
    soft = lam * one_hot(ya, 4) + (1 - lam) * one_hot(yb, 4)
    mixed = (lam * F.cross_entropy(out, ya, label_smoothing=smoothing)
             + (1 - lam) * F.cross_entropy(out, yb, label_smoothing=smoothing))
    assert F.cross_entropy(out, soft, label_smoothing=smoothing).item() == pytest.approx(mixed.item())


def full(**kw):
    base = dict(crop_padding=1, flip=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    return Augment(**{**base, **kw})


def test_batch_augment_keeps_flat_rows_flat_and_repeats_per_seed_rank_epoch_step():
    x, y = torch.rand(12, 64), torch.arange(12) % 10
    a0 = BatchAugment(full(), seed=7, rank=0, input_shape=(64,), num_classes=10)
    a1 = BatchAugment(full(), seed=7, rank=1, input_shape=(64,), num_classes=10)
    ox, oy = a0(x, y, epoch=2, step=3)
    assert ox.shape == (12, 64) and oy.shape == (12, 10)
    assert torch.allclose(oy.sum(1), torch.ones(12))
    again = a0(x, y, epoch=2, step=3)
    assert torch.equal(ox, again[0]) and torch.equal(oy, again[1])  # a rerun repeats
    assert not torch.equal(ox, a1(x, y, epoch=2, step=3)[0])  # another rank draws differently
    assert not torch.equal(ox, a0(x, y, epoch=2, step=4)[0])  # and another step
    assert not torch.equal(ox, a0(x, y, epoch=3, step=3)[0])  # and another epoch
    assert len({batch_seed(7, r, e, s) for r in range(3) for e in range(3) for s in range(3)}) == 27


def test_crop_and_flip_alone_leave_labels_as_they_are():
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6)
    ox, oy = BatchAugment(Augment(crop_padding=2, flip=True), 0, 0, (3, 8, 8), 6)(x, y, 0, 0)
    assert ox.shape == x.shape and oy is y


def test_nothing_on_builds_nothing_and_bad_data_is_refused():
    assert augment.build(None, 0, 0, (64,), "classification", 10) is None
    assert augment.build(Augment(), 0, 0, (64,), "classification", 10) is None
    with pytest.raises(ValueError, match="regularization.augment: mixup"):
        augment.build(Augment(mixup_alpha=0.2), 0, 0, (3,), "regression", 1)
    with pytest.raises(ValueError, match="regularization.augment: crop, flip"):
        augment.build(Augment(flip=True), 0, 0, (5,), "classification", 3)


def test_image_sides_match_what_the_conv_models_see():
    digits = data_mod.load(Experiment(name="d").data, 0)
    assert image_shape(digits.input_shape)[1:] == IMAGE_SIDES["digits"]
    assert image_shape((28, 28))[1:] == IMAGE_SIDES["mnist"] == IMAGE_SIDES["fashion_mnist"]
    assert image_shape((3, 32, 32))[1:] == IMAGE_SIDES["cifar10"]


def test_augment_fields_are_searched_like_other_regularization_fields():
    spec = Experiment(name="s", regularization=Regularization(augment=Augment(
        crop_padding=tune.choice([0, 2]), flip=tune.choice([True, False]),
        mixup_alpha=tune.loguniform(0.1, 1.0))))
    assert set(domains(spec)) == {"regularization.augment.crop_padding",
                                  "regularization.augment.flip",
                                  "regularization.augment.mixup_alpha"}


def test_only_training_batches_are_augmented(monkeypatch):
    """Every call is a training step (validation, calibration of static int8 and the saved
    model see the data as it is), and the splits themselves are never changed."""
    calls = []
    original = BatchAugment.__call__

    def spy(self, x, y, epoch, step):
        calls.append((epoch, step, len(x)))
        return original(self, x, y, epoch, step)

    monkeypatch.setattr(BatchAugment, "__call__", spy)
    spec = Experiment(name="a", epochs=2, model=Model(arch="cnn"),
                      regularization=Regularization(augment=full()),
                      compression=[Quantize(method="static", calibration_batches=2)])
    before = data_mod.load(spec.data, spec.seed)
    state = fit(spec, lambda m, w=None: None)
    assert len(calls) == state.step == 2 * state.steps_per_epoch
    assert [c[:2] for c in calls[:2]] == [(0, 0), (0, 1)]
    assert torch.equal(state.datasets.train.x, before.train.x)
    assert torch.equal(state.datasets.val.x, before.val.x)
    assert state.metrics["val_accuracy"] > 0.1  # trained on soft targets, validated on raw rows


def test_augmented_training_repeats_and_differs_from_plain():
    def run(aug):
        spec = Experiment(name="a", epochs=1, model=Model(hidden=[16]),
                          regularization=Regularization(augment=aug))
        state = fit(spec, lambda m, w=None: None)
        return torch.cat([p.detach().flatten() for p in state.model.parameters()])

    first, again, plain = run(full()), run(full()), run(None)
    assert torch.equal(first, again)
    assert not torch.allclose(first, plain)


GLOO_RANK = r"""
import json, sys, torch.distributed as dist
from dlopt.spec import Experiment
from dlopt.train.loop import fit
rank, spec_json = int(sys.argv[1]), json.loads(sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2)
reports = []
fit(Experiment.model_validate(spec_json), lambda m, w=None: reports.append(m), rank=rank, world=2)
dist.destroy_process_group()
print(json.dumps([m for m in reports if not m.get("final")]))
"""


def test_pipeline_ranks_draw_the_same_mixes_as_one_process():
    """Pipeline ranks all walk every batch (data rank 0): the first stage's mixed inputs and
    the last stage's soft targets come from the same draws, so the losses equal one process
    training the whole model with the same augmentation."""
    import json

    from dlopt_testing import run_gloo_ranks

    spec = {"name": "pipe-aug", "seed": 3, "epochs": 2,
            "data": {"dataset": "digits", "batch_size": 50, "test_fraction": 0.0},
            "model": {"arch": "mlp", "hidden": [32, 16]},
            "regularization": {"augment": {"crop_padding": 1, "flip": True,
                                           "mixup_alpha": 0.4, "cutmix_alpha": 1.0}},
            "resources": {"num_workers": 2, "strategy": "pipeline"}}
    pipe = json.loads(run_gloo_ranks(GLOO_RANK, json.dumps(spec))[0].strip().splitlines()[-1])
    single = []
    fit(Experiment.model_validate({**spec, "resources": {"num_workers": 1}}),
        lambda m, w=None: single.append(m))
    assert [m["epoch"] for m in pipe] == [1, 2]
    for a, b in zip(single, pipe):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
