"""The catalog experiments validate and plan (`dlopt plan`), and the linear-regression
experiment's full-batch trial is exactly optimizer `gd`."""
import json
from pathlib import Path

import pytest
import torch

from dlopt_testing import run_cli
from dlopt.spec.load import apply_overrides, load
from dlopt.train.loop import fit

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TRIALS = {"linear_regression_gd": 3, "mlp_l2_sgd": 1, "cnn_adam": 1, "grid_lr_batch": 9}


@pytest.mark.parametrize("name", sorted(TRIALS))
def test_experiment_plans(name):
    out = run_cli("plan", str(EXPERIMENTS / f"{name}.py"), "--json", env={"DLOPT_MNIST_ROOT": ""})
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["trials"] == TRIALS[name]
    if name == "grid_lr_batch":
        assert plan["domains"]["optimizer.lr"]["values"] == [0.01, 0.1, 1.0]
        assert plan["domains"]["data.batch_size"]["values"] == [32, 64, 128]
    if name == "linear_regression_gd":
        assert plan["metric"] == "val_loss" and plan["mode"] == "min"


def test_cnn_adam_and_mlp_switch_to_mnist_with_a_local_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DLOPT_MNIST_ROOT", str(tmp_path))
    for name in ("cnn_adam", "mlp_l2_sgd"):
        spec = load(EXPERIMENTS / f"{name}.py")
        assert spec.data.dataset == "mnist" and spec.data.root == str(tmp_path)


def test_full_batch_trial_is_exactly_gd():
    base = load(EXPERIMENTS / "linear_regression_gd.py")
    sgd_full = apply_overrides(base, ["data.batch_size=1000", "epochs=5"])
    gd = apply_overrides(base, ["data.batch_size=10", "optimizer.name=gd", "epochs=5"])
    a, b = fit(sgd_full, lambda m, w=None: None), fit(gd, lambda m, w=None: None)
    assert a.step == b.step == 5
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
