"""The rank loader (dlopt.ml.rank_loader) without Ray: an image folder's training split read by
each rank's own DataLoader covers every row at most once per epoch across ranks with equal
steps, reshuffles each epoch the same way on every rank, and returns the raw rows the Ray
Data path returns; validation is read whole, in order."""
import numpy as np
import pytest
import torch
from source_fixtures import images

from dlopt.ml import rank_loader, sources, streams
from dlopt.runtime import streaming
from dlopt.spec import Data, Experiment, Resources, Source


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (11, 3), (5, 1)])
def test_epoch_rows_split_the_permutation_evenly(n, world):
    epochs = []
    for epoch in range(3):
        shares = []
        for rank in range(world):
            rows = rank_loader.EpochRows(n, rank, world, seed=7, shuffle=True)
            rows.epoch = epoch
            shares.append(list(rows))
        assert {len(s) for s in shares} == {n // world}  # the same steps on every rank
        seen = [i for s in shares for i in s]
        assert len(set(seen)) == len(seen) == n - n % world  # each row at most once
        epochs.append(shares)
    if n > 2:
        assert epochs[0] != epochs[1]  # a new order each epoch


def test_epoch_rows_unshuffled_keeps_the_order():
    rows = rank_loader.EpochRows(7, 1, 2, seed=0, shuffle=False)
    assert list(rows) == [1, 3, 5]


@pytest.fixture
def folder(tmp_path):
    return images(tmp_path / "img", per_class=12, splits=("train", "val"))


@pytest.mark.parametrize("workers", [0, 1])
def test_two_ranks_read_the_training_split_once_per_epoch(folder, workers):
    data = Data(source=Source(format="images", path=str(folder)))
    found = sources.scan(data, seed=0)
    expected, expected_y = (torch.cat(t).numpy() for t in zip(*streams.plain_batches(
        data.source, found.units["train"], data.task)(8, 0)))
    for epoch in range(2):
        got, labels, steps = [], [], []
        for rank in range(2):
            batches = rank_loader.split_batches(data.source, found.units, "train", rank=rank,
                                                world=2, seed=0, workers=workers,
                                                shuffle_buffer=1024)
            share = list(batches(5, epoch))
            steps.append(len(share))
            got += [x for x, _ in share]
            labels += [y for _, y in share]
        assert steps[0] == steps[1]
        x = torch.cat(got).numpy()
        assert x.dtype == np.uint8 and x.shape[1:] == expected.shape[1:]  # raw rows, CHW
        assert len(x) == len(expected) == 36
        y = torch.cat(labels)
        assert y.dtype == torch.int64
        pairs = lambda a, b: sorted((r.tobytes(), int(c)) for r, c in zip(a, b))  # noqa: E731
        assert pairs(x, y) == pairs(expected, expected_y)  # the same rows and labels, each once


def test_persistent_workers_follow_the_epoch(folder):
    data = Data(source=Source(format="images", path=str(folder)))
    found = sources.scan(data, seed=0)
    batches = rank_loader.image_batches(data.source, found.units["train"], seed=3, workers=1)
    first = [torch.cat([x for x, _ in batches(6, e)]) for e in (0, 1, 0)]
    assert not torch.equal(first[0], first[1])  # epoch 1 reads another order
    assert torch.equal(first[0], first[2])  # epoch 0 again: the same order


def test_rank_datasets_validate_on_the_whole_split_in_order(folder):
    spec = Experiment(name="r", data=Data(batch_size=8, source=Source(
        format="images", path=str(folder), loader_workers=0)))
    shape, transform, trainer_datasets = streaming.source_splits(spec)
    assert trainer_datasets == {}  # the ranks read the files: no Ray dataset
    data = streaming.rank_datasets(spec, shape, transform, rank=1, world=2)
    assert len(data.train) == 36 and len(data.val) == 36
    val = torch.cat([y for _, y in data.val.batches(10, 0)])
    found = sources.scan(spec.data, 0)
    assert val.tolist() == [lab for u in found.units["val"] for lab in u["labels"]]
    assert sum(len(y) for _, y in data.train.batches(8, 0)) == 18  # rank 1's half


def test_the_reader_switch():
    images_spec = Experiment(name="r", data=Data(source=Source(format="images", path="x")))
    assert streaming.uses_rank_loader(images_spec)
    assert not streaming.uses_rank_loader(Experiment(name="r", data=Data(source=Source(
        format="images", path="x", reader="ray_data"))))
    assert not streaming.uses_rank_loader(Experiment(name="r", data=Data(source=Source(
        format="parquet", path="x"))))
    assert streaming.loader_workers(images_spec) == 1
    assert streaming.loader_workers(images_spec.model_copy(update={
        "resources": Resources(cpus_per_worker=4)})) == 3
