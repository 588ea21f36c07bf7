"""Structured pruning of graph models trains with masks per dependency group
(dlopt.stages.pruning.groups) in the real training loop (no Ray): the channels held at zero
while training are exactly the channels the final cut removes, so the cut model's forward
equals the masked model's (rtol 1e-4), on `resnet` and on a custom model with two residual
adds; the plan survives a restart."""
import copy

import pytest
import torch
from torch import nn

from dlopt import Data, Experiment, Model, Optimizer, Prune, Tracking
from dlopt.ml import residual
from dlopt.train.loop import fit, load_checkpoint


class TwoAdds(nn.Module):
    """A user's graph model on flat 8x8 digits: two residual adds tie one channel set."""

    def __init__(self, spec, input_shape, out_features):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.proj = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, out_features)

    def forward(self, x):
        x = torch.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        x = torch.relu(x + self.a(x))
        x = torch.relu(x + self.b(x))
        return self.head(self.proj(x).mean(dim=(2, 3)))


def two_adds(spec, input_shape, out_features):
    return TwoAdds(spec, input_shape, out_features)


ARCHS = {"resnet": "resnet", "custom": "test_residual_masks:two_adds"}


def _spec(arch: str, epochs: int = 3) -> Experiment:
    prune = Prune(sparsity=0.5, scope="layer", structured=True, schedule="gradual",
                  start_epoch=0, end_epoch=2, frequency=5)  # the last epoch fine-tunes
    return Experiment(name="g", seed=0, epochs=epochs,
                      data=Data(dataset="digits", batch_size=64, val_fraction=0.2,
                                test_fraction=0.2),
                      model=Model(arch=arch), optimizer=Optimizer(name="sgd", lr=0.05,
                                                                  momentum=0.9),
                      compression=[prune], tracking=Tracking(report_every=1))


class Reports:
    def __init__(self, tmp_path):
        self.metrics, self.dirs, self.tmp = [], [], tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics, write=None):
        self.metrics.append(metrics)
        if write is not None:
            d = self.tmp / f"ckpt{len(self.metrics)}"
            d.mkdir()
            write(d)
            self.dirs.append(d)


@pytest.mark.parametrize("name", list(ARCHS))
def test_cut_equals_the_masked_model_at_fit_end(name, tmp_path, monkeypatch):
    seen = {}
    real_cut = residual.cut

    def spy(model, example, roots):
        seen["masked"] = copy.deepcopy(model).eval()
        seen["roots"] = copy.deepcopy(roots)
        real_cut(model, example, roots)
        seen["cut"] = model

    monkeypatch.setattr(residual, "cut", spy)
    r = Reports(tmp_path)
    fit(_spec(ARCHS[name]), r)
    final = r.metrics[-1]
    masked, cut = seen["masked"], seen["cut"].eval()
    assert seen["roots"] and all(seen["roots"].values())
    n_masked = sum(p.numel() for p in masked.parameters())
    assert sum(p.numel() for p in cut.parameters()) < 0.5 * n_masked
    x = torch.from_numpy(__import__("sklearn.datasets").datasets.load_digits().data).float()
    with torch.no_grad():
        out, ref = cut(x), masked(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.abs().max() > 0.1  # a trained model, not zeros: the comparison can fail
    # the masked model was what the last epoch validated: the cut changed no prediction
    assert final["compressed_val_accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-9)
    assert final["prune_rank_mask_mismatches"] == 0 and final["prune_mask_updates"] > 1


def test_group_plan_survives_a_restart(tmp_path, monkeypatch):
    plans = []
    real_cut = residual.cut
    monkeypatch.setattr(residual, "cut", lambda m, e, roots: plans.append(roots) or
                        real_cut(m, e, roots))
    fit(_spec(ARCHS["custom"]), Reports(tmp_path / "full"))
    part = Reports(tmp_path / "part")

    class Crash(Exception):
        pass

    def crash_after_epoch_1(metrics, write=None):
        part(metrics, write)
        if metrics.get("epoch") == 1:
            raise Crash  # mid schedule: the plan so far must come back with the weights

    with pytest.raises(Crash):
        fit(_spec(ARCHS["custom"]), crash_after_epoch_1)
    resumed = load_checkpoint(part.dirs[-1])
    (saved,) = [s["groups"] for s in resumed.stages if s.get("groups")]
    assert saved["roots"]
    fit(_spec(ARCHS["custom"]), Reports(tmp_path / "rest"), resume=resumed)
    assert plans[1] == plans[0]


def test_preflight_accepts_a_traceable_graph_model_and_refuses_it_under_fsdp():
    """The untraceable case is in tests/invalid_specs/run/r7_arch_not_traceable.py."""
    from dlopt import Resources
    from dlopt.driver.preflight import traceable_problems

    assert traceable_problems(_spec(ARCHS["custom"])) == []
    fsdp = _spec(ARCHS["custom"]).model_copy(
        update={"resources": Resources(num_workers=2, strategy="fsdp")})
    (line,) = traceable_problems(fsdp)
    assert line.startswith("resources.strategy: 'fsdp'") and "graph model" in line
