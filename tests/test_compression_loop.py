"""Compression stages inside the real training loop (no Ray): reports, saved artifact,
resume with masks, distillation from an installed teacher."""
import pytest
import torch
from dlopt import Data, Distill, Experiment, Model, Optimizer, Prune, Quantize, Tracking
from dlopt.artifact.files import build_from_dir
from dlopt.ml.data import load
from dlopt.train.loop import fit, load_checkpoint


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


def spec(compression, epochs=4, hidden=(48,), **kw):
    # every epoch reported with its checkpoint: the resume tests crash after a given epoch
    return Experiment(name="c", epochs=epochs, data=Data(dataset="digits", batch_size=64),
                      model=Model(hidden=list(hidden)),
                      optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
                      compression=compression, tracking=Tracking(report_every=1), **kw)


def val_accuracy(model, seed=0):
    d = load(Data(dataset="digits"), seed)
    with torch.no_grad():
        return (model(d.val.x).argmax(1) == d.val.y).sum().item() / len(d.val.y)


PRUNE_QUANT = [Prune(scope="global", sparsity=0.8, schedule="gradual", start_epoch=1, end_epoch=3,
                     frequency=2), Quantize(method="dynamic")]


def test_prune_then_quantize_reports_and_saves_a_compact_model(tmp_path):
    r = Reports(tmp_path)
    fit(spec(PRUNE_QUANT), r)
    final = r.metrics[-1]
    for key in ("compressed_val_accuracy", "model_bytes", "dense_bytes", "compression_ratio",
                "sparsity", "latency_ms", "param_count", "prune_sparsity", "prune_model_bytes",
                "quantize_model_bytes", "quantize_val_accuracy"):
        assert key in final, key
    assert final["sparsity"] >= 0.8 and final["prune_sparsity"] >= 0.8
    assert final["model_bytes"] == final["quantize_model_bytes"]  # on disk == measured in memory
    assert final["model_bytes"] < final["prune_model_bytes"] < final["dense_bytes"] / 3
    assert final["compression_ratio"] == pytest.approx(final["dense_bytes"] / final["model_bytes"])
    model = build_from_dir(r.dirs[-1])
    assert val_accuracy(model) == final["compressed_val_accuracy"]
    assert final["compressed_val_accuracy"] > 0.85


def test_masks_survive_checkpoint_and_resume(tmp_path):
    full = Reports(tmp_path / "full")
    fit(spec(PRUNE_QUANT), full)
    part = Reports(tmp_path / "part")

    class Crash(Exception):
        pass

    def crash_after_epoch_2(metrics, write=None):
        part(metrics, write)
        if metrics.get("epoch") == 2:
            raise Crash  # the worker dies mid-window (pruning runs epochs 1..3)

    with pytest.raises(Crash):
        fit(spec(PRUNE_QUANT), crash_after_epoch_2)
    ckpt = load_checkpoint(part.dirs[1])
    masks = {k: v for k, v in ckpt.model.items() if k.endswith("weight_mask")}
    assert masks and any((m == 0).any() for m in masks.values())
    rest = Reports(tmp_path / "rest")
    fit(spec(PRUNE_QUANT), rest, resume=ckpt)
    assert [m["epoch"] for m in rest.metrics if not m.get("final")] == [3, 4]
    assert rest.metrics[-1]["compressed_val_accuracy"] == full.metrics[-1]["compressed_val_accuracy"]
    assert rest.metrics[-1]["model_bytes"] == full.metrics[-1]["model_bytes"]


def test_qat_then_static_specs_train_and_reload_exactly(tmp_path):
    for i, comp in enumerate([[Quantize(method="qat", qat_epochs=1)],
                              [Prune(sparsity=0.5), Quantize(method="static",
                                                             calibration_batches=2)]]):
        r = Reports(tmp_path / str(i))
        fit(spec(comp, epochs=3), r)
        final = r.metrics[-1]
        assert final["compressed_val_accuracy"] > 0.85
        assert val_accuracy(build_from_dir(r.dirs[-1])) == final["compressed_val_accuracy"]


def test_distill_uses_the_teacher_handed_to_the_loop(tmp_path):
    from dlopt.artifact.teachers import TeacherFiles
    from dlopt.registry.teachers import registry_tags

    t = Reports(tmp_path / "teacher")
    fit(spec([], hidden=(64,)), t)
    files = {p.name: p.read_bytes() for p in t.dirs[-1].iterdir() if p.name != "checkpoint.pt"}
    uri = "models:/unit-teacher@champion"
    teachers = {uri: TeacherFiles("unit-teacher", "7", files).to_payload()}
    s = Reports(tmp_path / "student")
    fit(spec([Distill(teacher=uri, temperature=2.0, alpha=0.5)], hidden=(16,)), s,
        teachers=teachers)
    final = s.metrics[-1]
    assert final["distill_teacher_version"] == 7
    assert 0.8 < final["distill_teacher_agreement"] <= 1.0
    assert registry_tags(spec([Distill(teacher=uri)]), final) == {
        "dlopt.teacher": uri, "dlopt.teacher_version": "7"}
