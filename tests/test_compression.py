"""Compression stages without Ray: pruning schedule and masks, int8 quantization, KD loss,
the compact artifact (bytes and exact round trip)."""
import pytest
import torch
import torch.nn.functional as F
from dlopt import Experiment, Model, Prune
from dlopt.artifact.compact import CompactArtifact, decode, encode
from dlopt.stages import State
from dlopt.stages.pruning import masks as P
from dlopt.stages.pruning import Prune as PruneStage
from dlopt.ml import quantization as Q
from dlopt.artifact.files import load_compressed
from dlopt.stages.compression import weight_sparsity
from dlopt.stages.distill import kd_loss
from torch import nn


def mlp(seed=0, sizes=(64, 48, 32, 10)):
    torch.manual_seed(seed)
    layers = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def experiment(**kw):
    return Experiment(name="t", epochs=kw.pop("epochs", 10), model=Model(hidden=[48, 32]), **kw)


# ------------------------------------------------------------------ gradual schedule
@pytest.mark.parametrize("step", [0, 10, 37, 50, 99, 100, 150])
def test_gradual_schedule_matches_zhu_gupta(step):
    s_f, t0, t_end = 0.9, 10, 100
    expected = 0.0 if step <= t0 else s_f if step >= t_end else \
        s_f + (0.0 - s_f) * (1 - (step - t0) / (t_end - t0)) ** 3
    assert P.gradual_sparsity(step, s_f, t0, t_end) == pytest.approx(expected, abs=1e-12)


def test_gradual_stage_updates_every_frequency_steps_and_masks_reach_the_formula():
    spec = Prune(scope="global", sparsity=0.8, schedule="gradual", start_epoch=1, end_epoch=4,
                 frequency=3)
    stage = PruneStage(spec, experiment(epochs=5))
    spe = 5  # steps per epoch: window is steps 5..20
    due = [t for t in range(26) if stage.target(t, spe) is not None]
    assert due == [5, 8, 11, 14, 17, 20]
    model = mlp()
    state = State(spec=None, model=model, steps_per_epoch=spe)
    stage.setup(state)
    for t in range(1, 21):
        state.step = t
        stage.after_step(state)
        if t in due:
            target = P.gradual_sparsity(t, 0.8, 5, 20)
            mods = [m for _, m in P.targets(model, False)]
            total = sum(m.weight_mask.numel() for m in mods)
            assert P.mask_sparsity(mods) == pytest.approx(round(target * total) / total, abs=1e-9)
    assert stage.sparsity == 0.8


# ------------------------------------------------------------------ masks under training
@pytest.mark.parametrize("opt", ["sgd_momentum", "adamw"])
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(opt):
    model = mlp()
    params_before = list(model.parameters())
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
                 if opt == "sgd_momentum" else torch.optim.AdamW(model.parameters(), lr=1e-2))
    stage = PruneStage(Prune(scope="layer", sparsity=0.7, schedule="one_shot", start_epoch=0),
                    experiment())
    state = State(spec=None, model=model, optimizer=optimizer, steps_per_epoch=4)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    # momentum built up before pruning must not revive pruned weights either
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    stage.setup(state)  # one-shot at step 0
    mods = [m for _, m in P.targets(model, False)]
    # the optimizer still steps the same Parameter objects, now named weight_orig
    assert {id(m.weight_orig) for m in mods} <= {id(p) for p in params_before}
    masks = [m.weight_mask.clone() for m in mods]
    assert all((mk == 0).float().mean().item() == pytest.approx(0.7, abs=0.01) for mk in masks)
    for step in range(1, 6):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        state.step = step
        stage.after_step(state)
        for m, mk in zip(mods, masks):
            assert torch.equal(m.weight_mask, mk)
            assert (m.weight_orig[mk == 0] == 0).all()
    model(x)  # the forward pre-hook recomputes weight = orig * mask
    for m, mk in zip(mods, masks):
        assert (m.weight[mk == 0] == 0).all() and (m.weight[mk == 1] != 0).all()
    P.make_permanent(model)
    assert weight_sparsity(model) == pytest.approx(0.7, abs=0.01)


def test_structured_pruning_removes_whole_rows_and_spares_the_output_layer():
    model = mlp()
    stage = PruneStage(Prune(scope="layer", structured=True, norm="l2", sparsity=0.5), experiment())
    stage.setup(State(spec=None, model=model, steps_per_epoch=1))
    P.make_permanent(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        zero_rows = (m.weight == 0).all(dim=1)
        assert zero_rows.sum().item() == m.out_features // 2
        assert ((m.weight != 0).sum(dim=1)[~zero_rows] == m.in_features).all()  # others intact
    assert (linears[-1].weight != 0).all()


def test_global_scope_ranks_all_layers_together():
    model = mlp()
    with torch.no_grad():
        model[1].weight.mul_(1e6)  # the first layer's weights are all large
    P.attach(model, False)
    mods = [m for _, m in P.targets(model, False)]
    P.apply_masks(mods, P.compute_masks(mods, 0.3, "global", False))
    assert (mods[0].weight_mask == 0).sum() == 0  # nothing pruned where weights are large
    total = sum(m.weight_mask.numel() for m in mods)
    assert P.mask_sparsity(mods) == pytest.approx(round(0.3 * total) / total)


# ------------------------------------------------------------------ quantization
def calib():
    torch.manual_seed(1)
    return [torch.randn(16, 64) for _ in range(3)]


def quantized(method):
    model = mlp()
    if method == "qat":
        Q.qat_prepare(model)
        Q.set_fake_quant(model, True)
        Q.qat_convert(model)
        meta = {"method": "dynamic", "act_mapping": "asymmetric"}
        Q.apply(model, meta)
    elif method == "static":
        meta = {"method": "static"}
        Q.apply(model, meta, Q.calibrate(model, calib()))
    else:
        meta = {"method": "dynamic"}
        Q.apply(model, meta)
    return model, meta


@pytest.mark.parametrize("method", ["dynamic", "static", "qat"])
def test_quantized_linear_weights_are_int8(method):
    model, _ = quantized(method)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.weight.qdata.dtype == torch.int8
            assert m.weight.scale.shape[0] == m.out_features  # per-row scales
            if method == "static":
                assert m.weight.act_quant_scale.numel() == 1
    x = torch.randn(8, 64)
    ref = mlp()(x)
    assert (model(x) - ref).abs().max().item() < 0.05  # int8 error is small


def test_quantization_keeps_pruned_zeros():
    model = mlp()
    P.attach(model, False)
    mods = [m for _, m in P.targets(model, False)]
    P.apply_masks(mods, P.compute_masks(mods, 0.9, "global", False))
    P.make_permanent(model)
    before = weight_sparsity(model)
    Q.apply(model, {"method": "dynamic"})
    assert weight_sparsity(model) >= before == pytest.approx(0.9, abs=1e-3)


def test_qat_keeps_parameters_and_pruning_masks():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    P.attach(model, False)
    mods = [m for _, m in P.targets(model, False)]
    P.apply_masks(mods, P.compute_masks(mods, 0.5, "layer", False))
    masks = [m.weight_mask.clone() for m in mods]
    Q.qat_prepare(model)
    Q.set_fake_quant(model, True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m).__name__ == "FakeQuantizedLinear" for m in linears)
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(m.weight_orig) for m in linears} <= opt_ids
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    P.zero_pruned(linears)
    for m, mk in zip(linears, masks):
        assert torch.equal(m.weight_mask, mk) and (m.weight_orig[mk == 0] == 0).all()


# ------------------------------------------------------------------ compact artifact
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.97, 0.999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_encode_decode_round_trip(sparsity, dtype):
    torch.manual_seed(0)
    t = torch.randn(123, 77)
    t[torch.rand_like(t) < sparsity] = 0
    t = (t * 40).to(dtype) if dtype == torch.int8 else t
    stored, info = encode("w", t)
    assert torch.equal(decode("w", info, stored), t)
    if sparsity > 0.99:
        assert info["layout"] == "delta"  # long gaps: filler entries exercised


def pruned_model(sparsity, sizes=(64, 48, 32, 10)):
    model = mlp(sizes=sizes)
    P.attach(model, False)
    mods = [m for _, m in P.targets(model, False)]
    if sparsity:
        P.apply_masks(mods, P.compute_masks(mods, sparsity, "global", False))
    P.make_permanent(model)
    return model


def test_artifact_bytes_shrink_with_sparsity_and_int8():
    sizes = [CompactArtifact(pruned_model(s)).nbytes() for s in (0.0, 0.5, 0.8, 0.9, 0.95)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    dense = sum(p.numel() * 4 for p in mlp().parameters())
    assert sizes[0] == pytest.approx(dense, rel=0.04)  # unpruned: dense layout + header
    # a LeNet-300-100-sized MLP on 8x8 digits: int8 values shrink the pruned artifact again
    big = (64, 300, 100, 10)
    fp32 = CompactArtifact(pruned_model(0.9, big)).nbytes()
    model = pruned_model(0.9, big)
    Q.apply(model, {"method": "dynamic"})
    int8 = CompactArtifact(model, {"method": "dynamic"}).nbytes()
    dense = sum(p.numel() * 4 for p in mlp(sizes=big).parameters())
    assert int8 < fp32 / 1.8 and dense / int8 > 12


@pytest.mark.parametrize("method", ["none", "dynamic", "static", "qat"])
def test_saved_artifact_reloads_to_identical_outputs(tmp_path, method):
    spec = experiment()
    if method == "none":
        model, meta = pruned_model(0.8), None
    else:
        model, meta = quantized(method)
    art = CompactArtifact(model, meta)
    art.save(tmp_path, spec.model_dump(mode="json"),
             {"input_shape": [64], "out_features": 10, "task": "classification"})
    assert (tmp_path / "model.safetensors").stat().st_size == art.nbytes()
    from dlopt.artifact.files import build_from_dir

    loaded = build_from_dir(tmp_path)
    x = torch.randn(40, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_loading_refuses_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown model format"):
        load_compressed(tmp_path, experiment(), {"format": "zip-pickle"})


# ------------------------------------------------------------------ distillation
def test_kd_loss_equals_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    T, alpha = 3.0, 0.7
    p_t = torch.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, dim=1))).sum(1).mean()
    ce = -torch.log_softmax(s, dim=1)[torch.arange(16), y].mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-6)
    assert kd_loss(s, s, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_uris_are_found_inside_search_domains():
    from dlopt.registry import teachers

    spec_json = {"compression": {"domain": "choice", "values": [
        [], [{"stage": "distill", "teacher": "models:/t@champion"}]]}}
    assert teachers.find(spec_json) == [("compression.values[1][0].teacher", "models:/t@champion")]


def test_resolve_version_rejects_malformed_uri():
    from dlopt.registry import teachers

    with pytest.raises(ValueError):
        teachers.resolve_version(None, "runs:/abc/model")
