"""Streamed sources without Ray (dlopt.ml.sources, dlopt.ml.streams): what `scan` finds in
each format, the deterministic split, the problems refused before Ray starts, and the
training statistics from a streaming pass."""
from pathlib import Path

import numpy as np
import pytest
import torch
from source_fixtures import CLASSES, FEATURES, hf, images, numpy_shards, parquet, rows

from dlopt import cli
from dlopt.ml import source_files, sources, streams
from dlopt.ml.transform import standardizer
from dlopt.spec import Data, Experiment, Source

N = 300


def make(kind: str, root: Path) -> Source:
    if kind == "parquet":
        return Source(format="parquet", path=str(parquet(root / "pq", N)))
    if kind == "numpy":
        return Source(format="numpy", path=str(numpy_shards(root / "np", N)))
    if kind == "hf":
        return Source(format="hf", path=str(hf(root / "hf", N)))
    return Source(format="images", path=str(images(root / "img", per_class=N // 3)))


def all_rows(data: Data, seed: int, split: str):
    found = sources.scan(data, seed)
    xs, ys = zip(*(b for b in streams.plain_batches(data.source, found.units[split],
                                                    data.task)(64, 0)))
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


@pytest.mark.parametrize("kind", ["parquet", "numpy", "hf", "images"])
def test_scan_splits_every_row_once(kind, tmp_path):
    data = Data(source=make(kind, tmp_path), val_fraction=0.2, test_fraction=0.2)
    found = sources.scan(data, seed=0)
    assert found.problems == ()
    assert sum(found.rows.values()) == N
    assert all(0.1 * N < found.rows[s] < 0.3 * N for s in ("val", "test")), found.rows
    assert found.num_classes == (3 if kind == "images" else 4)
    assert found.input_shape == ((3, 8, 8) if kind == "images" else (FEATURES,))
    seen = []
    for split in ("train", "val", "test"):
        x, y = all_rows(data, 0, split)
        assert len(y) == found.rows[split]  # the counts come from metadata alone
        seen += [r.tobytes() for r in x.reshape(len(x), -1)]
    assert len(seen) == len(set(seen)) == N  # disjoint splits covering every row
    # the same seed gives the same split in another process or worker; another seed another
    assert sources.scan(data, 0).rows == found.rows
    assert sources.scan(data, 1).rows != found.rows


def test_tabular_rows_come_back_raw(tmp_path):
    data = Data(source=make("parquet", tmp_path))
    x, y = all_rows(data, 0, "train")
    want_x, want_y = rows(N)
    index = {r.tobytes(): i for i, r in enumerate(want_x)}
    picked = [index[r.tobytes()] for r in x]
    np.testing.assert_array_equal(y, want_y[picked])


def test_own_split_folders(tmp_path):
    root = images(tmp_path / "img", per_class=5, splits=("train", "val", "test"))
    found = sources.scan(Data(source=Source(format="images", path=str(root))), 0)
    assert found.rows == {"train": 15, "val": 15, "test": 15}
    # without val/, validation is carved out of train by the hash
    (root / "val").rename(tmp_path / "gone")
    found = sources.scan(Data(source=Source(format="images", path=str(root)), val_fraction=0.4), 0)
    assert found.rows["train"] + found.rows["val"] == 15 and found.rows["val"] > 0
    assert found.rows["test"] == 15


def test_content_hash_split_ignores_order():
    x, y = rows(500)
    codes = source_files.content_codes(x, y, 3, 0.2, 0.2)
    order = np.random.default_rng(1).permutation(500)
    np.testing.assert_array_equal(source_files.content_codes(x[order], y[order], 3, 0.2, 0.2),
                                  codes[order])
    assert 60 < (codes == 1).sum() < 140


@pytest.mark.parametrize("kind", ["parquet", "images"])
def test_streaming_statistics_match_the_in_memory_fit(kind, tmp_path):
    data = Data(source=make(kind, tmp_path))
    x, _ = all_rows(data, 0, "train")
    found = sources.scan(data, 0)
    stream = (b.numpy() for b, _ in streams.plain_batches(data.source, found.units["train"],
                                                          data.task)(7, 0))
    fitted = streams.fit_transform(stream, "classification")
    want = (standardizer(x, 255.0, axis=(0, 2, 3), add_std=1e-6) if kind == "images"
            else standardizer(x))
    np.testing.assert_allclose(fitted.mean, want.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.std, want.std, rtol=1e-4, atol=1e-5)
    assert fitted.divisor == want.divisor


def test_load_withholds_the_test_split(tmp_path):
    from dlopt.ml import data as data_mod
    from dlopt.ml.splits import TestSplitWithheld

    data = Data(source=make("parquet", tmp_path))
    datasets = data_mod.load(data, 0)  # the switch: a source is streamed
    assert streams.is_streamed(datasets.train) and streams.is_streamed(datasets.val)
    with pytest.raises(TestSplitWithheld):
        len(datasets.test)
    assert len(data_mod.load(data, 0, with_test=True).test) == sources.scan(data, 0).rows["test"]


# ------------------------------------------------------------------ refused before Ray starts
def problems(source: Source, **data) -> list[str]:
    from dlopt.driver import preflight

    return preflight.source_problems(Experiment(name="p", data=Data(source=source, **data)))


def test_class_folder_without_images(tmp_path):
    root = images(tmp_path / "img", per_class=3)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images")
    (line,) = problems(Source(format="images", path=str(root)))
    assert line.startswith("data.source.path: class folder") and "empty has no images" in line


def test_images_of_different_sizes(tmp_path):
    root = images(tmp_path / "img", per_class=3)
    images(tmp_path / "big", per_class=1, size=12)
    (tmp_path / "big" / CLASSES[1] / "0000.png").rename(root / CLASSES[1] / "0000.png")
    (line,) = problems(Source(format="images", path=str(root)))
    assert line.startswith("data.source.path: images differ in size") and "(12, 12)" in line


def test_labels_outside_the_classes(tmp_path):
    source = Source(format="parquet", path=str(parquet(tmp_path / "pq", 100)), num_classes=2)
    (line,) = problems(source)
    assert line.startswith("data.source.num_classes: labels of") and "0..3" in line
    root = images(tmp_path / "img", per_class=2, splits=("train", "val"))
    (root / "val" / "fox").mkdir()
    (line,) = [p for p in problems(Source(format="images", path=str(root)))
               if "not one of" in p]
    assert line.startswith("data.source.path: class folder") and "fox" in line


def test_empty_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pq"
    root.mkdir()
    x, y = rows(20)
    pq.write_table(pa.table({"a": x[:, 0], "label": y}), root / "train.parquet")
    pq.write_table(pa.table({"a": x[:0, 0], "label": y[:0]}), root / "val.parquet")
    (line,) = problems(Source(format="parquet", path=str(root)))
    assert line == f"data.source.path: the val split of {root} is empty"


def test_parquet_feature_vector_column(tmp_path):
    """A list column of features (what benchmarks/streaming_memory.py writes): found by its
    own name, not the Parquet leaf's ("element"), with the label's statistics still read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "vec"
    root.mkdir()
    x, y = rows(40)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
                      "label": y})
    pq.write_table(table, root / "part.parquet", row_group_size=10)
    source = Source(format="parquet", path=str(root), features="x", num_classes=2)
    assert problems(Source(format="parquet", path=str(root), features="x")) == []
    found = sources.scan(Data(source=Source(format="parquet", path=str(root), features="x")), 0)
    assert sum(found.rows.values()) == 40 and found.input_shape == (x.shape[1],)
    assert any("labels of" in line for line in problems(source))  # statistics read


def test_missing_column_and_path(tmp_path):
    source = Source(format="parquet", path=str(parquet(tmp_path / "pq", 60)), label="target")
    assert all(p.startswith("data.source.label: no column 'target'") for p in problems(source))
    assert problems(Source(format="hf", path=str(tmp_path / "nope"))) == [
        f"data.source.path: {tmp_path / 'nope'} does not exist"]


def test_cli_run_refuses_an_empty_class_folder(tmp_path, monkeypatch, capsys):
    root = images(tmp_path / "img", per_class=2)
    (root / "zebra").mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s\nepochs: 1\ndata: {{source: {{format: images, path: {root}}}}}\n")
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(["run", str(spec)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.startswith("data.source.path: class folder")


def test_the_loop_trains_on_a_streamed_source(tmp_path):
    """No Ray: the loop reads the splits in this process (what a unit test can run)."""
    from dlopt.spec import Model, Optimizer
    from dlopt.train.loop import fit

    spec = Experiment(name="s", epochs=5, data=Data(batch_size=32, source=make("parquet", tmp_path)),
                      model=Model(hidden=[32]), optimizer=Optimizer(lr=0.02))
    reports = []
    fit(spec, lambda m, w: reports.append(m))
    assert reports[-1]["final"] == 1 and reports[-1]["val_accuracy"] > 0.7
