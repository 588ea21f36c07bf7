"""The built-in image datasets through the streamed path, without Ray:
`Source(format="mnist" | "fashion_mnist" | "cifar10", path=ROOT)` reads the same standard files
(IDX files, CIFAR-10's binary batches) under the same root as the in-memory
`Data(dataset=..., root=ROOT)`, a row range at a time (dlopt.ml.source_files), split as the
other sources are (validation hashed out of the official training files, the official test
files withheld), with the problems refused before Ray starts."""
from pathlib import Path

import numpy as np
import pytest
import torch
from source_fixtures import cifar_folder, digit_images, mnist_folder, write_idx

from dlopt.ml import data as data_mod
from dlopt.ml import source_files, sources, streams
from dlopt.ml.splits import TestSplitWithheld
from dlopt.ml.transform import standardizer
from dlopt.spec import Data, Experiment, Source

TRAIN, TEST = 300, 100


@pytest.fixture
def small_units(monkeypatch):
    """Several units per file, the last one partial: row ranges, not whole files."""
    monkeypatch.setattr(sources, "IDX_UNIT_ROWS", 64)
    monkeypatch.setattr(sources, "CIFAR_UNIT_ROWS", 25)


def split_rows(data: Data, split: str, seed: int = 0):
    found = sources.scan(data, seed)
    assert found.problems == ()
    batches = list(streams.plain_batches(data.source, found.units[split], data.task)(50, 0))
    return torch.cat([x for x, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy()


def key(x: np.ndarray, y: np.ndarray) -> list:
    """Rows as comparable items (image bytes and label), order ignored."""
    return sorted((xi.tobytes(), int(yi)) for xi, yi in zip(x, y))


@pytest.mark.parametrize("folder,gz", [("MNIST/raw", False), ("MNIST", True), ("", False)])
def test_mnist_rows_split_once_and_come_back_raw(folder, gz, tmp_path, small_units):
    root = mnist_folder(tmp_path / "m", TRAIN, TEST, folder=folder, gz=gz)
    data = Data(source=Source(format="mnist", path=str(root)), val_fraction=0.25)
    found = sources.scan(data, 0)
    assert found.problems == () and found.num_classes == 10 and found.input_shape == (1, 28, 28)
    assert found.rows["train"] + found.rows["val"] == TRAIN and found.rows["test"] == TEST
    assert 40 < found.rows["val"] < 110  # ~25% of 300, by hash
    assert len(found.units["train"]) > 1  # row ranges of the one training file
    x, y = digit_images(TRAIN + TEST)
    tx, ty = split_rows(data, "train")
    vx, vy = split_rows(data, "val")
    assert tx.dtype == np.uint8 and tx.shape[1:] == (1, 28, 28) and ty.dtype == np.int64
    # each official training row exactly once in train or val; the test split is the test file
    assert key(np.concatenate([tx, vx]), np.concatenate([ty, vy])) == key(x[:TRAIN], y[:TRAIN])
    sx, sy = split_rows(data, "test")
    assert key(sx, sy) == key(x[TRAIN:], y[TRAIN:])


def test_split_is_the_same_for_plain_and_gzipped_files(tmp_path, small_units):
    plain = Data(source=Source(format="fashion_mnist",
                               path=str(mnist_folder(tmp_path / "a", folder="FashionMNIST/raw"))))
    gz = Data(source=Source(format="fashion_mnist",
                            path=str(mnist_folder(tmp_path / "b", folder="FashionMNIST", gz=True))))
    for split in ("train", "val"):
        a, b = split_rows(plain, split), split_rows(gz, split)
        assert key(*a) == key(*b), split
    # another seed, another validation split
    assert key(*split_rows(plain, "val", seed=1)) != key(*split_rows(plain, "val"))


def test_cifar_record_ranges(tmp_path, small_units):
    root = cifar_folder(tmp_path / "c", per_batch=60, test=40)
    data = Data(source=Source(format="cifar10", path=str(root)), val_fraction=0.2)
    found = sources.scan(data, 0)
    assert found.problems == () and found.num_classes == 10 and found.input_shape == (3, 32, 32)
    assert found.rows["train"] + found.rows["val"] == 300 and found.rows["test"] == 40
    assert len(found.units["train"]) + len(found.units["val"]) > 5  # several per batch file
    x, y = digit_images(340, channels=3, size=32)
    tx, ty = split_rows(data, "train")
    vx, vy = split_rows(data, "val")
    assert key(np.concatenate([tx, vx]), np.concatenate([ty, vy])) == key(x[:300], y[:300])
    assert key(*split_rows(data, "test")) == key(x[300:], y[300:])


def test_row_range_readers_match_whole_file_reads(tmp_path):
    from dlopt.ml.vision_data import read_cifar_batch, read_idx

    fs, _ = source_files.filesystem(str(tmp_path))
    a = np.random.default_rng(0).integers(0, 256, size=(50, 7, 5)).astype(np.uint8)
    for gz in (False, True):
        path = write_idx(tmp_path / f"x{int(gz)}-idx3-ubyte", a, gz)
        np.testing.assert_array_equal(read_idx(path), a)
        np.testing.assert_array_equal(source_files.idx_rows(fs, str(path), 13, 41), a[13:41])
        assert source_files.idx_dims(fs, str(path)) == (50, 7, 5)
    cifar_folder(tmp_path / "c", per_batch=30, test=10)
    batch = tmp_path / "c" / source_files.CIFAR_DIR / "data_batch_2.bin"
    x, y = read_cifar_batch(batch)
    rx, ry = source_files.cifar_rows(fs, str(batch), 7, 23)
    np.testing.assert_array_equal(rx, x[7:23])
    np.testing.assert_array_equal(ry, y[7:23])


def test_streaming_statistics_match_the_in_memory_fit(tmp_path, small_units):
    data = Data(source=Source(format="cifar10", path=str(cifar_folder(tmp_path / "c"))))
    tx, _ = split_rows(data, "train")
    found = sources.scan(data, 0)
    stream = (b.numpy() for b, _ in streams.plain_batches(data.source, found.units["train"],
                                                          data.task)(33, 0))
    fitted = streams.fit_transform(stream, "classification")
    want = standardizer(tx, 255.0, axis=(0, 2, 3), add_std=1e-6)  # what vision_data fits
    np.testing.assert_allclose(fitted.mean, want.mean, rtol=1e-5)
    np.testing.assert_allclose(fitted.std, want.std, rtol=1e-5)
    assert fitted.divisor == 255.0


def test_load_streams_and_withholds_the_official_test_files(tmp_path):
    root = mnist_folder(tmp_path / "m", TRAIN, TEST)
    data = Data(source=Source(format="mnist", path=str(root)))
    datasets = data_mod.load(data, 0)  # the switch: a source is streamed
    assert streams.is_streamed(datasets.train) and streams.is_streamed(datasets.val)
    with pytest.raises(TestSplitWithheld):
        len(datasets.test)
    assert datasets.raw_example.dtype == np.uint8 and datasets.raw_example.shape == (2, 1, 28, 28)
    full = data_mod.load(data, 0, with_test=True)
    assert len(full.test) == TEST
    # the same files as the in-memory built-in under the same root: the same test rows
    memory = data_mod.load(Data(dataset="mnist", root=str(root)), 0, with_test=True)
    sx, sy = split_rows(data, "test")
    assert key(sx, sy) == key(memory.raw_test.x.numpy(), memory.raw_test.y.numpy())


# ------------------------------------------------------------------ refused before Ray starts
def source_problems(source: Source) -> list[str]:
    from dlopt.driver import preflight

    return preflight.source_problems(Experiment(name="p", data=Data(source=source)))


def test_missing_files_are_one_line_naming_where_dlopt_looked(tmp_path):
    mnist_folder(tmp_path / "m")
    (tmp_path / "m" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    (line,) = source_problems(Source(format="mnist", path=str(tmp_path / "m")))
    assert line.startswith(f"data.source.path: mnist: no local copy under {tmp_path / 'm'}")
    assert "t10k-labels-idx1-ubyte" in line and "train-images" not in line
    assert str(tmp_path / "m" / "MNIST" / "raw") in line
    # Fashion-MNIST looks in its own folder: MNIST's files are not it
    (line,) = source_problems(Source(format="fashion_mnist", path=str(tmp_path / "m")))
    assert "FashionMNIST/raw" in line and "train-images-idx3-ubyte" in line
    (tmp_path / "py" / "cifar-10-batches-py").mkdir(parents=True)
    (line,) = source_problems(Source(format="cifar10", path=str(tmp_path / "py")))
    assert line.startswith("data.source.path: cifar10: no local copy") and "unpickling" in line


def test_broken_files_are_refused(tmp_path):
    root = mnist_folder(tmp_path / "m", 40, 10)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(39, dtype=np.uint8))
    (line,) = source_problems(Source(format="mnist", path=str(root)))
    assert line.startswith("data.source.path: ") and "expected N x H x W images and N labels" in line
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01")  # a float IDX file
    (line,) = source_problems(Source(format="mnist", path=str(root)))
    assert "not an unsigned-byte IDX file" in line
    write_idx(raw / "train-labels-idx1-ubyte", np.full(40, 12, dtype=np.uint8))
    (line,) = source_problems(Source(format="mnist", path=str(root)))
    assert line.startswith("data.source.num_classes: labels of") and "0..9" in line
    croot = cifar_folder(tmp_path / "c", per_batch=10, test=10)
    with open(croot / source_files.CIFAR_DIR / "test_batch.bin", "ab") as f:
        f.write(b"\x00" * 5)
    (line,) = source_problems(Source(format="cifar10", path=str(croot)))
    assert "is not a multiple of 3073-byte records" in line


def test_in_memory_built_in_with_missing_files_is_refused(tmp_path):
    from dlopt.driver import preflight

    def problems(**data):
        return preflight.local_copy_problems(Experiment(name="p", data=Data(**data),
                                                        model={"arch": "cnn"}))

    (line,) = problems(dataset="cifar10", root=str(tmp_path))
    assert line.startswith(f"data.root: cifar10: no local copy under {tmp_path}")
    (line,) = problems(dataset="mnist", root=str(tmp_path / "nowhere"))
    assert line.startswith("data.root: ") and "does not exist" in line
    assert problems(dataset="mnist", root=str(mnist_folder(tmp_path / "m", 20, 10))) == []
    assert problems(dataset="digits") == []


def test_pipeline_with_a_source_is_refused_by_the_spec(tmp_path):
    with pytest.raises(ValueError) as err:
        Experiment(name="p", data=Data(source=Source(format="mnist", path=str(tmp_path))),
                   model={"hidden": [16, 8]},
                   resources={"num_workers": 2, "strategy": "pipeline"})
    assert "data.source: a streamed source is not implemented with strategy 'pipeline'" in str(err.value)


def test_the_loop_trains_a_cnn_on_a_streamed_mnist_folder(tmp_path):
    """No Ray: the loop reads row ranges of the IDX files in this process."""
    from dlopt.spec import Model, Optimizer
    from dlopt.train.loop import fit

    root = mnist_folder(tmp_path / "m", 400, 50, gz=True)
    spec = Experiment(name="s", epochs=3, data=Data(batch_size=32, source=Source(
        format="mnist", path=str(root))), model=Model(arch="cnn"), optimizer=Optimizer(lr=0.01))
    reports = []
    fit(spec, lambda m, w: reports.append(m))
    assert reports[-1]["final"] == 1 and reports[-1]["val_accuracy"] > 0.8


def test_the_source_formats_are_the_built_in_names():
    from dlopt.spec import LOCAL_DATASETS

    assert source_files.BUILT_IN == LOCAL_DATASETS
    assert set(LOCAL_DATASETS) <= set(data_mod.DATASETS)
    assert Path(source_files.__file__).name == "source_files.py"
