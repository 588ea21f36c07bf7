"""MNIST / Fashion-MNIST (IDX) and CIFAR-10 (binary) read from a local root with numpy."""
import gzip
import struct

import numpy as np
import pytest
import torch

from dlopt import Data, Experiment, Model, Optimizer
from dlopt.ml.data import load
from dlopt.ml.splits import TestSplitWithheld
from dlopt.ml.vision_data import DatasetNotFound, MNIST_FILES, read_idx


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def fake_mnist(root, folder="MNIST", n_train=200, n_test=50, compress=False):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": np.arange(n_test) % 10}
    for key, name in MNIST_FILES.items():
        write_idx(raw / (name + (".gz" if compress else "")), arrays[key], compress)
    return arrays


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x", a)
    write_idx(tmp_path / "x.gz", a, compress=True)
    assert np.array_equal(read_idx(tmp_path / "x"), a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float IDX
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("dataset,folder,compress", [("mnist", "MNIST", False),
                                                     ("fashion_mnist", "FashionMNIST", True)])
def test_idx_dataset_from_torchvision_layout(tmp_path, dataset, folder, compress):
    arrays = fake_mnist(tmp_path, folder, compress=compress)
    d = load(Data(dataset=dataset, root=str(tmp_path), val_fraction=0.2), seed=0, with_test=True)
    assert d.input_shape == (1, 28, 28) and d.num_classes == d.out_features == 10
    assert len(d.train) == 160 and len(d.val) == 40 and len(d.test) == 50  # test = official one
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    assert abs(d.train.x.mean().item()) < 1e-3 and d.train.x.std().item() == pytest.approx(1, rel=1e-2)
    # the official test images, scaled with the training statistics, in order
    assert torch.equal(d.test.y, torch.from_numpy(arrays["test_y"]))
    corr = np.corrcoef(d.test.x[:, 0].reshape(50, -1)[0], arrays["test_x"][0].ravel())[0, 1]
    assert corr == pytest.approx(1.0, abs=1e-6)
    withheld = load(Data(dataset=dataset, root=str(tmp_path)), seed=0)
    with pytest.raises(TestSplitWithheld):
        len(withheld.test)


def write_cifar(folder, n_per_batch=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = np.arange(n_per_batch, dtype=np.uint8) % 10
        pixels = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(folder / name)
    return labels, pixels


def test_cifar10_binary_version(tmp_path):
    labels, pixels = write_cifar(tmp_path / "cifar-10-batches-bin")
    d = load(Data(dataset="cifar10", root=str(tmp_path), val_fraction=0.2), seed=0, with_test=True)
    assert d.input_shape == (3, 32, 32) and len(d.train) == 80 and len(d.val) == 20
    assert torch.equal(d.test.y, torch.from_numpy(labels.astype(np.int64)))
    per_channel = d.train.x.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max().item() < 1e-3


def test_missing_local_copy_names_the_path(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        load(Data(dataset="mnist", root=str(tmp_path / "nowhere")), seed=0)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in str(err.value)
    assert "train-images-idx3-ubyte" in str(err.value)


def test_pickled_cifar_is_refused_with_a_reason(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetNotFound, match="pickle"):
        load(Data(dataset="cifar10", root=str(tmp_path)), seed=0)


def test_download_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="torchvision"):
        load(Data(dataset="mnist", root=str(tmp_path), download=True), seed=0)


def test_lenet5_trains_on_local_mnist_copy(tmp_path):
    from dlopt.train.loop import fit

    fake_mnist(tmp_path, n_train=100, n_test=20)
    spec = Experiment(name="m", epochs=1, data=Data(dataset="mnist", root=str(tmp_path), batch_size=50),
                      model=Model(arch="lenet5"), optimizer=Optimizer(name="adam"))
    reports = []
    fit(spec, lambda m, w=None: reports.append(m))
    assert reports[-1]["final"] == 1 and 0 <= reports[-1]["val_accuracy"] <= 1


def test_spec_requires_a_root_and_refuses_download():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="data.root: dataset 'cifar10' is read from a local copy"):
        Experiment(name="v", data=Data(dataset="cifar10"))
    with pytest.raises(ValidationError, match="data.download: dlopt cannot download"):
        Experiment(name="v", data=Data(dataset="mnist", root="/data", download=True))
    assert Experiment(name="v", data=Data(dataset="mnist", root="/data")).data.root == "/data"
