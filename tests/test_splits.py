"""Train/validation/test splits: disjoint, seeded, stratified, identical on every DDP rank,
and the test split out of reach of training and selection code."""
import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlopt_testing import run_gloo_ranks
from dlopt import Experiment, Model, Optimizer
from dlopt.ml import data as data_mod
from dlopt.ml.data import load
from dlopt.ml.splits import WITHHELD, TestSplitWithheld, split_indices
from dlopt.spec import Data

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform" / "dlopt"


def digits_labels():
    from sklearn.datasets import load_digits

    return load_digits().target


def test_splits_are_disjoint_and_cover_everything():
    y = digits_labels()
    train, val, test = split_indices(y, 0.2, 0.2, seed=0, stratify=True)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted([*train, *val, *test]) == list(range(len(y)))
    assert len(test) == pytest.approx(0.2 * len(y), abs=1)
    assert len(val) == pytest.approx(0.2 * len(y), abs=1)


def test_splits_are_reproducible_for_a_seed_and_change_with_it():
    y = digits_labels()
    a = split_indices(y, 0.2, 0.2, seed=3, stratify=True)
    b = split_indices(y, 0.2, 0.2, seed=3, stratify=True)
    c = split_indices(y, 0.2, 0.2, seed=4, stratify=True)
    for x, z in zip(a, b):
        assert np.array_equal(x, z)
    assert not np.array_equal(a[2], c[2])


def test_splits_are_stratified():
    y = digits_labels()
    overall = np.bincount(y) / len(y)
    for part in split_indices(y, 0.2, 0.2, seed=0, stratify=True):
        share = np.bincount(y[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01


def test_no_test_fraction_means_no_test_split():
    train, val, test = split_indices(digits_labels(), 0.2, 0.0, seed=0, stratify=True)
    assert len(test) == 0 and len(train) + len(val) == 1797
    assert load(Data(dataset="digits", test_fraction=0.0), 0, with_test=True).test is None


def test_default_data_has_a_test_split():
    assert Data().test_fraction == 0.2


@pytest.mark.parametrize("dataset", ["digits", "linear_1d", "synthetic"])
def test_load_withholds_test_unless_asked(dataset):
    spec = Data(dataset=dataset)
    plain = load(spec, 0)
    full = load(spec, 0, with_test=True)
    # asking for the test split changes nothing else
    assert torch.equal(plain.train.x, full.train.x) and torch.equal(plain.val.y, full.val.y)
    assert plain.test is WITHHELD
    for touch in (lambda t: t.x, lambda t: len(t), lambda t: t[0], lambda t: list(t),
                  lambda t: bool(t)):
        with pytest.raises(TestSplitWithheld):
            touch(plain.test)
    n = len(full.train) + len(full.val) + len(full.test)
    assert len(full.test) == pytest.approx(0.2 * n, abs=1)
    rows = {tuple(r) for r in full.test.x.tolist()}
    assert not rows & {tuple(r) for r in full.train.x.tolist()}


# --------------------------------------------------------------- identical across DDP ranks
RANK_CODE = r"""
import hashlib, sys, torch, torch.distributed as dist
from dlopt.ml.data import load, split_indices
from dlopt.spec import Data
rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
d = load(Data(dataset="digits", val_fraction=0.15, test_fraction=0.25), 5, with_test=True)
h = hashlib.sha256()
for part in (d.train, d.val, d.test):
    h.update(part.x.numpy().tobytes()); h.update(part.y.numpy().tobytes())
digests = [None, None]
dist.all_gather_object(digests, h.hexdigest())
dist.destroy_process_group()
print(digests[0], digests[1])
"""


def test_splits_identical_on_every_ddp_rank():
    """Two gloo ranks in separate processes load the data; all_gather compares the bytes."""
    seen = [out.split() for out in run_gloo_ranks(RANK_CODE, timeout=120)]
    assert seen[0] == seen[1] and seen[0][0] == seen[0][1]
    # and the same bytes as this (third) process computes
    d = load(Data(dataset="digits", val_fraction=0.15, test_fraction=0.25), 5, with_test=True)
    h = hashlib.sha256()
    for part in (d.train, d.val, d.test):
        h.update(part.x.numpy().tobytes())
        h.update(part.y.numpy().tobytes())
    assert seen[0][0] == h.hexdigest()


# --------------------------------------------------------------- the test split is out of reach
def test_training_never_loads_the_test_split(monkeypatch, tmp_path):
    from dlopt.train import loop

    calls = []
    real = data_mod.load

    def spy(spec, seed, with_test=False):
        calls.append(with_test)
        return real(spec, seed, with_test=with_test)

    monkeypatch.setattr(data_mod, "load", spy)
    reports = []
    state = loop.fit(Experiment(name="t", epochs=1, model=Model(hidden=[16]),
                                optimizer=Optimizer(name="adam", lr=1e-2)),
                     lambda m, w=None: reports.append(m))
    assert calls == [False]
    assert state.datasets.test is WITHHELD
    with pytest.raises(TestSplitWithheld):
        state.datasets.test.x  # noqa: B018 (the read itself raises: what a stage would see through State.datasets)
    assert not any(k.startswith("test_") for r in reports for k in r)


def _test_split_readers(path: Path) -> list[str]:
    """`with_test=<anything but False>` and `.test` attribute reads in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "with_test" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append(f"{path.name}:{node.lineno} with_test=")
        if isinstance(node, ast.Attribute) and node.attr == "test":
            found.append(f"{path.name}:{node.lineno} .test")
    return found


def test_only_the_final_evaluation_reads_the_test_split():
    """Static check over the whole package: training, stages, search, trial and selection
    code never asks for the test split; only dlopt.evaluation (after selection) does."""
    allowed = {PACKAGE / "registry" / "evaluation.py", PACKAGE / "ml" / "data.py"}
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in allowed:
            readers += _test_split_readers(path)
    assert readers == []
    assert _test_split_readers(PACKAGE / "registry" / "evaluation.py"), "the evaluation must read it"


def test_standardization_uses_train_statistics_and_stays_bounded():
    """Digits has pixels constant on the training split; they must not blow up elsewhere."""
    d = load(Data(dataset="digits"), 0, with_test=True)
    assert d.train.x.mean(0).abs().max() < 1e-4
    for part in (d.train, d.val, d.test):
        assert torch.isfinite(part.x).all() and part.x.abs().max() < 100


def test_built_in_datasets_are_cached_identically_and_read_without_sklearn(tmp_path, monkeypatch):
    """The per-machine dataset cache (dlopt.data._built_in) gives the very same tensors, and
    a fresh process reading it never imports scikit-learn (~1.5 s saved per Ray worker)."""

    import torch

    from dlopt import Data
    from dlopt.ml import data as data_mod

    monkeypatch.setenv("DLOPT_CACHE_DIR", str(tmp_path))
    for spec in (Data(dataset="digits"), Data(dataset="synthetic", n_samples=300, n_classes=3)):
        built = data_mod.load(spec, 3, with_test=True)
        assert len(list((tmp_path / "datasets").glob(f"{spec.dataset}-*.npz"))) == 1
        cached = data_mod.load(spec, 3, with_test=True)
        for name in ("train", "val", "test"):
            a, b = getattr(built, name), getattr(cached, name)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), (spec.dataset, name)
        assert (built.task, built.input_shape, built.out_features) == \
            (cached.task, cached.input_shape, cached.out_features)
    data_mod.load(Data(dataset="digits"), 4)  # another seed splits differently: its own entry
    assert len(list((tmp_path / "datasets").glob("digits-*.npz"))) == 2
    code = ("import sys; from dlopt import Data; from dlopt.ml import data; data.load(Data(), 3); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "DLOPT_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
