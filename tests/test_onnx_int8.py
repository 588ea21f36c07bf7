"""Compression that pays at inference, without Ray: structured pruning removes units (the saved
and rebuilt model is smaller and computes what the masked model did), the ONNX Runtime int8
model agrees with PyTorch and leaves no layer in float, and what cannot be removed or
quantized is refused by the spec, naming the field."""
import json

import pytest
import torch
from dlopt import Experiment, Model, Prune, Quantize
from dlopt.artifact.compact import CompactArtifact
from dlopt.artifact.files import build_from_dir
from dlopt.ml import models, onnx_int8, shrink
from dlopt.spec.checks import cross_field_problems
from dlopt.stages import State
from dlopt.stages.pruning import Prune as PruneStage
from pydantic import ValidationError
from torch import nn

SHAPE = (64,)  # digits: 64 flat features, a 1x8x8 image for the conv nets


def build(arch, activation="relu", hidden=(48, 32), seed=0):
    torch.manual_seed(seed)
    model = models.build(Model(arch=arch, hidden=list(hidden), activation=activation), SHAPE, 10)
    with torch.no_grad():  # non-zero biases everywhere: a pruned unit's bias must go too
        for m in model.modules():
            if isinstance(m, shrink.LAYERS) and m.bias is not None:
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def prune_structured(model, sparsity=0.5):
    """The Prune stage, one-shot structured at setup, then fit_end: masks, then removal."""
    spec = Prune(scope="layer", structured=True, sparsity=sparsity, schedule="one_shot")
    stage = PruneStage(spec, Experiment(name="t", epochs=2))
    state = State(spec=None, model=model, steps_per_epoch=1)
    stage.setup(state)
    return stage, state


def layer_shapes(model):
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, shrink.LAYERS)]


@pytest.mark.parametrize("arch,activation", [("mlp", "relu"), ("mlp", "sigmoid"),
                                             ("lenet5", "relu"), ("cnn", "tanh")])
def test_removed_units_leave_a_smaller_model_that_computes_the_masked_outputs(arch, activation,
                                                                              tmp_path):
    model = build(arch, activation)
    dense_shapes, dense_params = layer_shapes(model), sum(p.numel() for p in model.parameters())
    x = torch.randn(16, *SHAPE)
    stage, state = prune_structured(model)
    with torch.no_grad():
        masked = model(x)  # the masked model: pruned rows and their biases are zero
    stage.fit_end(state)
    shapes = layer_shapes(model)
    assert stage.widths and len(shapes) == len(dense_shapes)
    # every layer but the output one lost half its units, and the next layer those inputs
    for before, after in zip(dense_shapes[:-1], shapes[:-1]):
        assert after[0] == before[0] - round(0.5 * before[0])
    assert shapes[-1][0] == dense_shapes[-1][0] == 10
    assert sum(p.numel() for p in model.parameters()) < 0.5 * dense_params
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)
    # saved with its widths, rebuilt from meta.json alone: the same smaller network
    spec = Experiment(name="t", model=Model(arch=arch, hidden=[48, 32], activation=activation))
    art = CompactArtifact(model, None, {"widths": stage.widths})
    art.save(tmp_path, spec.model_dump(mode="json"),
             {"input_shape": list(SHAPE), "out_features": 10, "task": "classification"})
    assert json.loads((tmp_path / "meta.json").read_text())["widths"] == stage.widths
    rebuilt = build_from_dir(tmp_path)
    assert layer_shapes(rebuilt) == shapes
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), masked, atol=1e-5)


def test_flops_count_the_removed_network():
    model = build("mlp", hidden=(300, 100))
    dense = shrink.flops(model, torch.zeros(1, 64))
    assert dense == 2 * (64 * 300 + 300 * 100 + 100 * 10)
    stage, state = prune_structured(model, 0.75)
    stage.fit_end(state)
    assert stage.widths == {"1": 75, "3": 25}
    assert shrink.flops(model, torch.zeros(1, 64)) == 2 * (64 * 75 + 75 * 25 + 25 * 10)


def test_residual_nets_cannot_be_shrunk():
    with pytest.raises(ValueError, match="chain"):
        shrink.chain(build("resnet"))


# ------------------------------------------------------------------ ONNX Runtime int8
def trained(arch, steps=60):
    """A few steps on a fixed random task, so the predictions are not all one class."""
    torch.manual_seed(1)
    model = build(arch).train()
    x = torch.randn(512, *SHAPE)
    y = (x[:, :10].argmax(1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x


@pytest.mark.parametrize("arch,method", [("mlp", "dynamic"), ("mlp", "static"),
                                         ("cnn", "static"), ("lenet5", "dynamic"),
                                         ("resnet", "static")])
def test_onnx_int8_agrees_with_pytorch_and_quantizes_every_layer(arch, method):
    model, x = trained(arch)
    int8 = onnx_int8.quantize(onnx_int8.export(model, x[:1]), method, [x[:128], x[128:256]])
    assert onnx_int8.unquantized_layers(int8) == []  # Conv and Gemm alike
    ops = onnx_int8.op_counts(int8)
    assert ops.get("MatMulInteger", 0) + ops.get("ConvInteger", 0) + ops.get("QuantizeLinear", 0)
    with torch.no_grad():
        ours = model(x[256:])
    theirs = torch.from_numpy(onnx_int8.run(onnx_int8.session(int8, threads=1), x[256:]))
    agreement = (ours.argmax(1) == theirs.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement
    assert theirs.shape == ours.shape  # the batch dimension is dynamic


def test_a_float_layer_is_reported_not_skipped():
    model, x = trained("mlp", steps=1)
    fp32 = onnx_int8.export(model, x[:1])
    assert [s.split()[0] for s in onnx_int8.unquantized_layers(fp32)] == ["Gemm"] * 3


# ------------------------------------------------------------------ refusals (spec level)
@pytest.mark.parametrize("model,stage,field", [
    (Model(arch="resnet", activation="sigmoid"), Prune(scope="layer", structured=True),
     "model.activation"),
    (Model(arch="lenet5", activation="sigmoid"), Prune(scope="layer", structured=True),
     "model.activation"),
    (Model(arch="cnn"), Quantize(method="qat"), "compression.0.method"),
])
def test_what_cannot_be_removed_or_quantized_is_refused(model, stage, field):
    spec = Experiment.model_construct(name="t", epochs=4, model=model, compression=[stage],
                                      **{k: v for k, v in Experiment(name="t").__dict__.items()
                                         if k not in ("name", "epochs", "model", "compression")})
    problems = cross_field_problems(spec)
    assert len(problems) == 1 and problems[0].startswith(field + ":"), problems
    with pytest.raises(ValidationError, match=field):
        Experiment(name="t", epochs=4, model=model, compression=[stage])


@pytest.mark.parametrize("model,stage", [
    (Model(arch="cnn"), Prune(scope="layer", structured=True)),
    (Model(arch="resnet"), Prune(scope="layer", structured=True)),  # dependency groups (issue 29)
    (Model(arch="pkg.mod:net"), Prune(scope="layer", structured=True)),
    (Model(arch="mlp", activation="sigmoid"), Prune(scope="layer", structured=True)),
    (Model(arch="resnet"), Quantize(method="static")),
    (Model(arch="lenet5"), Quantize(method="dynamic")),
])
def test_what_can_be_is_accepted(model, stage):
    assert cross_field_problems(Experiment(name="t", epochs=4, model=model,
                                           compression=[stage])) == []


def test_pyfunc_wrapper_predicts_with_onnxruntime_when_the_artifact_has_it(tmp_path):
    from types import SimpleNamespace

    from dlopt.registry.serving import DloptModel

    model, x = trained("mlp", steps=5)
    int8 = onnx_int8.quantize(onnx_int8.export(model, x[:1]), "dynamic")
    spec = Experiment(name="t", model=Model(hidden=[48, 32]))
    meta = {"input_shape": list(SHAPE), "out_features": 10, "task": "classification"}
    for d, files in ((tmp_path / "onnx", {onnx_int8.FILE: int8}), (tmp_path / "torch", {})):
        CompactArtifact(model, None, None, files).save(d, spec.model_dump(mode="json"), meta)
    served = DloptModel()
    served.load_context(SimpleNamespace(artifacts={"model_dir": str(tmp_path / "onnx")}))
    assert served.session is not None and served.model is None
    out = served.predict(None, x[:7].numpy(), params={"output": "logits"})
    assert (out == onnx_int8.run(onnx_int8.session(int8), x[:7])).all()
    plain = DloptModel()
    plain.load_context(SimpleNamespace(artifacts={"model_dir": str(tmp_path / "torch")}))
    assert plain.session is None
    with torch.no_grad():
        logits = plain.predict(None, x[:7].numpy(), params={"output": "logits"})
        assert torch.allclose(torch.from_numpy(logits), model(x[:7]))
