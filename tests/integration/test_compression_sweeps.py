"""Compression end to end with real Ray and real MLflow (SQLite in tmp):

- experiments/compress_lenet300.py (gradual global pruning to 90% + int8) against the same
  spec trained dense: >= 10x fewer bytes on disk, accuracy within 0.5 points;
- its registered champion loads in a fresh process (dlopt.load_model and mlflow.pyfunc)
  and reproduces the logged compressed_val_accuracy exactly; pyfunc predicts with the
  ONNX Runtime int8 model, agreeing with PyTorch as the logged onnx_agreement says;
- a CNN pruned structurally and quantized static is registered smaller (widths in meta.json,
  fewer parameters and FLOPs) and served by ONNX Runtime through mlflow.pyfunc;
- a student distilled from the registered dense model agrees with it more often than the
  same student trained alone (same seed, same epochs);
- 2 DDP workers hold identical pruning masks;
- an unknown teacher is refused (exit 2, field named) before Ray starts.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dlopt import (
    Data,
    Distill,
    Experiment,
    Model,
    Optimizer,
    Prune,
    Quantize,
    Resources,
    Schedule,
    Search,
    Tracking,
    tune,
)
from dlopt.artifact.files import build_from_dir
from dlopt.ml.data import load as load_data
from dlopt.spec.load import load as load_spec
from dlopt.driver.sweep import run
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "experiments" / "compress_lenet300.py"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("compression")


def uri_of(work: Path) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def sweep(spec, work):
    return run(spec, tracking_uri=uri_of(work), storage=str(work / "ray_results"), progress=False)


@pytest.fixture(scope="module")
def compressed(work):
    return sweep(load_spec(str(EXPERIMENT)), work)


@pytest.fixture(scope="module")
def dense(work):
    """The experiment's own spec without compression; registered, it is also the teacher."""
    data = load_spec(str(EXPERIMENT)).model_dump(mode="json")
    data.update(name="digits-lenet300-dense", compression=[])
    data["tracking"].update(register_as="digits-lenet300-dense")
    return sweep(Experiment.model_validate(data), work)


def test_lenet300_is_10x_smaller_within_half_a_point(compressed, dense):
    m, d = compressed.best.metrics, dense.best.metrics
    print(f"\ndense val_accuracy {d['val_accuracy']:.4f} bytes {d['model_bytes']}; compressed "
          f"{m['compressed_val_accuracy']:.4f} bytes {m['model_bytes']} ratio "
          f"{m['compression_ratio']:.1f} sparsity {m['sparsity']:.3f} latency {m['latency_ms']:.3f} ms")
    assert m["sparsity"] >= 0.9 and m["prune_sparsity"] >= 0.9
    assert m["dense_bytes"] == 4 * m["param_count"]
    assert "dense_bytes" not in d and "compression_ratio" not in d  # no compression stage
    assert m["dense_bytes"] / m["model_bytes"] >= 10 and m["compression_ratio"] >= 10
    assert m["quantize_model_bytes"] < m["prune_model_bytes"] < m["dense_bytes"]
    assert m["compressed_val_accuracy"] >= d["val_accuracy"] - 0.005
    # model_bytes is the file on disk: the saved artifact in the trial's final checkpoint
    saved = Path(compressed.best.checkpoint_path) / "model.safetensors"
    assert saved.stat().st_size == m["model_bytes"]
    meta = json.loads((saved.parent / "meta.json").read_text())
    assert meta["format"] == "compact-v1" and meta["quantization"]["method"] == "dynamic"
    # the trial's MLflow run has the final and per-stage compression metrics, once each
    client = MlflowClient(compressed.tracking_uri)
    logged = client.get_run(compressed.best.run_id).data.metrics
    for key in ("model_bytes", "dense_bytes", "compression_ratio", "sparsity", "latency_ms",
                "param_count", "prune_model_bytes", "quantize_val_accuracy"):
        assert key in logged, key


def test_champion_loads_in_a_fresh_process_and_reproduces_accuracy(compressed, work):
    client = MlflowClient(compressed.tracking_uri)
    version = client.get_model_version_by_alias("digits-lenet300", "champion")
    tags = version.tags
    assert tags["dlopt.source_run"] == compressed.best.run_id
    assert tags["dlopt.spec_hash"] and "metric.compressed_val_accuracy" in tags
    logged = client.get_run(compressed.best.run_id).data.metrics["compressed_val_accuracy"]
    code = (
        "import mlflow, numpy as np, torch, dlopt\n"
        f"mlflow.set_tracking_uri({compressed.tracking_uri!r})\n"
        # raw validation rows as sklearn returns them (0-16): the registered model's input
        "from sklearn.datasets import load_digits\nfrom dlopt.ml.splits import split_indices\n"
        "b = load_digits()\n_, val, _ = split_indices(b.target, 0.2, 0.2, 0, True)\n"
        "x, y = torch.from_numpy(b.data[val]), torch.from_numpy(b.target[val])\n"
        "m = dlopt.load_model('models:/digits-lenet300@champion')\n"
        "with torch.no_grad():\n"
        "    pred = m(x).argmax(1)\n"
        "py = mlflow.pyfunc.load_model('models:/digits-lenet300@champion')\n"
        "assert py.unwrap_python_model().session is not None  # the ONNX Runtime path\n"
        "pyf = np.asarray(py.predict(x.numpy()))\n"  # class labels, from the raw rows
        "int8 = [type(l.weight).__name__ for l in m.modules() if isinstance(l, torch.nn.Linear)]\n"
        "print((pred == y).sum().item() / len(y), (pyf == pred.numpy()).mean(),"
        " ','.join(int8))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    acc, pyfunc_agreement, kinds = out.stdout.strip().splitlines()[-1].split()
    assert float(acc) == logged == compressed.best.metrics["compressed_val_accuracy"]
    onnx_agreement = compressed.best.metrics["onnx_agreement"]
    assert float(pyfunc_agreement) == pytest.approx(onnx_agreement, abs=0.01)
    assert onnx_agreement >= 0.97
    assert set(kinds.split(",")) == {"Int8Tensor"}


def test_structured_cnn_registers_smaller_and_serves_int8_with_onnxruntime(work):
    import mlflow
    import numpy as np

    spec = Experiment(
        name="cnn-int8", seed=0, epochs=2,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="cnn"), optimizer=Optimizer(name="adam", lr=3e-3),
        compression=[Prune(scope="layer", structured=True, sparsity=0.5, start_epoch=1),
                     Quantize(method="static", calibration_batches=2)],
        search=Search(metric="compressed_val_accuracy", mode="max"),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="digits-cnn-int8", register_as="digits-cnn-int8"),
    )
    result = sweep(spec, work)
    m = result.best.metrics
    assert result.best.status == "ok"
    assert m["param_count"] < 0.5 * m["dense_param_count"] and m["flops"] < m["dense_flops"]
    meta = json.loads((Path(result.best.checkpoint_path) / "meta.json").read_text())
    assert meta["widths"] == {"1.0": 16, "1.3": 32, "1.6": 64, "2": 64}
    assert meta["onnx"]["method"] == "static" and meta["onnx"]["ops"]["Conv"] == 3
    torch_model = build_from_dir(Path(result.best.checkpoint_path))
    d = load_data(Data(dataset="digits"), 0)
    mlflow.set_tracking_uri(result.tracking_uri)
    served = mlflow.pyfunc.load_model("models:/digits-cnn-int8@champion")
    assert served.unwrap_python_model().session is not None
    with torch.no_grad():
        ours = torch_model(d.val.x).argmax(1).numpy()
    # the served model takes the raw rows sklearn returns (its input transform is inside)
    from sklearn.datasets import load_digits

    from dlopt.ml.splits import split_indices

    raw = load_digits()
    _, val, _ = split_indices(raw.target, 0.2, 0.2, 0, True)
    assert (raw.target[val] == d.val.y.numpy()).all()
    theirs = np.asarray(served.predict(raw.data[val]))  # class labels
    assert (ours == theirs).mean() == pytest.approx(m["onnx_agreement"], abs=0.01)
    assert m["onnx_agreement"] >= 0.9


def test_distilled_student_agrees_with_teacher_more_than_alone(dense, work):
    import dlopt
    import mlflow

    teacher_uri = "models:/digits-lenet300-dense@champion"
    spec = Experiment(
        name="digits-student", seed=0, epochs=5,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[16]),
        optimizer=Optimizer(name="adam", lr=0.01), schedule=Schedule(name="cosine"),
        compression=tune.grid([[], [Distill(teacher=teacher_uri, temperature=2.0, alpha=0.9)]]),
        search=Search(algorithm="grid", metric="compressed_val_accuracy", mode="max",
                      max_concurrent_trials=2),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="digits-distill", register_as="digits-student"),
    )
    result = sweep(spec, work)
    mlflow.set_tracking_uri(result.tracking_uri)
    teacher = dlopt.load_model(teacher_uri)  # takes raw rows (its input transform inside)
    d = load_data(Data(dataset="digits"), 0)
    from sklearn.datasets import load_digits
    from dlopt.ml.splits import split_indices

    raw = load_digits()
    _, val, _ = split_indices(raw.target, 0.2, 0.2, 0, True)
    with torch.no_grad():
        teacher_pred = teacher(torch.from_numpy(raw.data[val])).argmax(1)
        assert torch.equal(teacher_pred, teacher.network(d.val.x).argmax(1))
    agreement = {}
    for t in result.trials:
        assert t.status == "ok"
        student = build_from_dir(Path(t.checkpoint_path))
        with torch.no_grad():
            same = (student(d.val.x).argmax(1) == teacher_pred).sum().item()
        agreement["distill" if "distill_teacher_agreement" in t.metrics else "alone"] = same
        if "distill_teacher_agreement" in t.metrics:  # the trial's own measurement agrees
            assert t.metrics["distill_teacher_agreement"] == pytest.approx(same / len(d.val.y))
    print(f"\nagreement with the teacher on {len(d.val.y)} val examples: {agreement}")
    assert agreement["distill"] > agreement["alone"]
    client = MlflowClient(result.tracking_uri)
    teacher_version = client.get_model_version_by_alias("digits-lenet300-dense", "champion")
    tags = client.get_model_version_by_alias("digits-student", "champion").tags
    if "distill_teacher_agreement" in result.best.metrics:  # a distilled winner names its teacher
        assert tags["dlopt.teacher"] == teacher_uri
        assert tags["dlopt.teacher_version"] == str(teacher_version.version)
    else:
        assert "dlopt.teacher" not in tags


@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_two_ddp_workers_hold_identical_masks(work, allocation):
    scope = "global" if allocation == "uniform" else "layer"
    spec = Experiment(
        name=f"ddp-prune-{allocation}", seed=0, epochs=3,
        data=Data(dataset="digits", batch_size=32),
        model=Model(hidden=[64]), optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
        compression=[Prune(scope=scope, sparsity=0.8, schedule="gradual", start_epoch=0,
                           end_epoch=2, frequency=4, allocation=allocation)],
        resources=Resources(num_workers=2),
    )
    result = sweep(spec, work)
    m = result.trials[0].metrics
    assert result.trials[0].status == "ok"
    assert m["prune_mask_updates"] >= 3  # masks changed several times under DDP
    assert m["prune_rank_mask_mismatches"] == 0  # sensitivity: rank 0's choice, broadcast
    if allocation == "uniform":
        assert m["sparsity"] == pytest.approx(0.8, abs=1e-3)
        return
    kept = [v for k, v in m.items() if k.startswith("prune_kept.")]
    params = [v for k, v in m.items() if k.startswith("prune_params.")]
    assert len(kept) == 2 and sum(params) - sum(kept) >= 0.8 * sum(params)
    client = MlflowClient(result.tracking_uri)
    run_id = result.trials[0].run_id
    logged = client.get_run(run_id).data.metrics
    assert {k for k in logged if k.startswith("prune_sparsity.")} == \
        {k for k in m if k.startswith("prune_sparsity.")}
    path = client.download_artifacts(run_id, "compression_report.json", str(work))
    layers = json.loads(Path(path).read_text())["layers"]
    assert sorted(row["kept"] for row in layers) == sorted(kept)


def test_two_ddp_workers_mask_the_same_dependency_groups(work):
    """Structured pruning of resnet under DDP: rank 0 plans the group masks and broadcasts
    them (dlopt.stages.pruning.groups); the cut at fit_end removes exactly what was masked."""
    spec = Experiment(
        name="ddp-prune-groups", seed=0, epochs=2,
        data=Data(dataset="digits", batch_size=32), model=Model(arch="resnet"),
        optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
        compression=[Prune(scope="layer", sparsity=0.5, structured=True, schedule="gradual",
                           start_epoch=0, end_epoch=1, frequency=4)],
        resources=Resources(num_workers=2),
    )
    result = sweep(spec, work)
    m = result.trials[0].metrics
    assert result.trials[0].status == "ok"
    assert m["prune_mask_updates"] >= 3 and m["prune_rank_mask_mismatches"] == 0
    assert m["param_count"] < 0.5 * m["dense_param_count"]
    # the masked model validated last; the cut one scores the same
    assert m["compressed_val_accuracy"] == pytest.approx(m["val_accuracy"], abs=1e-9)


def test_unknown_teacher_is_refused_before_ray_starts(dense, work, tmp_path):
    spec = load_spec(str(EXPERIMENT)).model_dump(mode="json")
    spec["compression"] = [{"stage": "distill", "teacher": "models:/no-such-model@champion"}]
    path = tmp_path / "bad_teacher.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-m", "dlopt.cli", "run", str(path), "--tracking-uri",
                          uri_of(work), "--storage", str(tmp_path / "ray_results")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "compression[0].teacher" in out.stderr and "no-such-model" in out.stderr
    assert not (tmp_path / "ray_results").exists()  # nothing started
