"""Device discipline (docs/architecture.md, "Devices") proven on a CPU-only machine.

How, without a GPU:
- collectives: a process group whose only backend is registered for device type `meta`
  (`init_process_group("meta:gloo")`) refuses a CPU tensor exactly as NCCL (registered for
  `cuda` only) does: "No backend type associated with device type cpu". `meta` stands in for
  `cuda`: a collective handed the strategy's device goes through, and the call fails only later,
  reading a meta tensor's (absent) data on the host, which a CUDA tensor has. Plus a static
  check that no module of dlopt calls torch.distributed's collectives except through
  dlopt.ml.collectives, and that every call there is given a device that is not a literal.
- models and data on different devices: the trial's device is `meta` while the final model
  sits on the CPU (as after FSDP's or the pipeline's gather): each stage must use the model's.
- checkpoints: storages tagged `cuda:1` when saved (torch.serialization's location taggers)
  load only with `map_location`; without it torch tries CUDA, as on a machine with one GPU.
"""
from __future__ import annotations

import ast
import contextlib
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import dlopt
from dlopt import Data, Experiment, Model, Optimizer, Tracking
from dlopt.ml import collectives, devices, models, shrink
from dlopt.ml.data import load as load_data
from dlopt.stages import State
from dlopt.stages.compression import latency_ms
from dlopt.stages.distill import Distill
from dlopt.stages.pruning import masks as prune_masks
from dlopt.stages.quantize import Quantize
from dlopt.train import checkpoint, pipeline, sharding, strategies
from dlopt.train.checkpoint import TrialCheckpoint, load_checkpoint
from dlopt.train.loop import _any_rank

ROOT = Path(dlopt.__file__).parent  # the code under test, wherever it is imported from
NCCL_REFUSAL = "No backend type associated with device type cpu"


@contextlib.contextmanager
def group(backend: str):
    """A 1-rank process group (in this process) with `backend` ("meta:gloo": meta tensors only)."""
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def reaches_backend(call) -> None:
    """`call` runs its collective on a meta tensor (accepted) and fails only reading its data."""
    with pytest.raises((RuntimeError, NotImplementedError)) as err:
        call()
    assert NCCL_REFUSAL not in str(err.value)
    assert "meta" in str(err.value).lower()


def spec(**kw) -> Experiment:
    base = dict(name="d", epochs=1, data=Data(dataset="digits", batch_size=64),
                model=Model(hidden=[16]), optimizer=Optimizer(name="sgd", lr=0.05),
                tracking=Tracking(report_every=1))
    return Experiment(**{**base, **kw})


# ------------------------------------------------------------------ 1: collectives
def test_a_group_for_one_device_type_refuses_cpu_tensors_like_nccl():
    with group("meta:gloo"):
        with pytest.raises(RuntimeError, match=NCCL_REFUSAL):
            dist.all_reduce(torch.ones(1))
        with pytest.raises(RuntimeError, match=NCCL_REFUSAL):
            collectives.reduce_tensor([1.0], "cpu")
        out = collectives.reduce_tensor([1.0, 2.0], "meta", "max")
        assert out.device.type == "meta" and out.dtype == torch.float64
        assert collectives.broadcast_tensor(torch.zeros(2, device="meta"), 0).device.type == "meta"
        assert collectives.reduce_on_device(torch.zeros(1, device="meta"), "min").device.type == "meta"


def test_every_caller_sends_its_collective_on_the_strategy_device():
    model = nn.Linear(3, 2).to("meta")
    with group("meta:gloo"):
        reaches_backend(lambda: _any_rank(True, 2, "meta"))
        reaches_backend(lambda: sharding.max_shard_fraction(model, "meta"))
        reaches_backend(lambda: pipeline.max_part_fraction(model, model, "meta"))
        reaches_backend(lambda: prune_masks.tensors_agree([torch.ones(2, 3, device="meta")], 2))
        ddp = strategies.DataParallel(spec(), 0, 2, "meta")
        reaches_backend(lambda: ddp.epoch_loss(torch.zeros((), dtype=torch.float64, device="meta")))
        pipe = strategies.Pipelined(spec(), 0, 2, "meta")
        reaches_backend(lambda: pipe.epoch_loss(torch.zeros((), dtype=torch.float64, device="meta")))


COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "gather", "scatter", "barrier", "all_gather_object", "gather_object",
               "broadcast_object_list", "scatter_object_list", "send", "recv", "isend", "irecv"}
DEVICE_TAKING = {"reduce_tensor", "reduce", "broadcast_object"}


def sources():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_collectives_go_through_one_module_and_are_given_a_device():
    direct, literal = [], []
    for path, tree in sources():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in COLLECTIVES
                    and ast.unparse(node.value) in ("dist", "torch.distributed")
                    and rel != "ml/collectives.py"):
                direct.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
            if (isinstance(node, ast.ImportFrom) and node.module == "torch.distributed"
                    and any(a.name in COLLECTIVES for a in node.names)):
                direct.append(f"{rel}:{node.lineno} from torch.distributed import ...")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and ast.unparse(node.func.value) == "collectives"
                    and node.func.attr in DEVICE_TAKING):
                given = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "device")]
                if node.func.attr == "broadcast_object":
                    given = [*node.args[2:], *(k.value for k in node.keywords
                                                if k.arg == "device")]
                if not given or any(isinstance(g, ast.Constant) for g in given[:1]):
                    literal.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert direct == [], "collectives outside dlopt.ml.collectives"
    assert literal == [], "collectives without the strategy's device"


# ------------------------------------------------------------------ 4: checkpoints
def test_every_torch_load_names_a_map_location():
    missing = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, tree in sources() for n in ast.walk(tree)
               if isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"
               and not any(k.arg == "map_location" for k in n.keywords)]
    assert missing == []


@contextlib.contextmanager
def saved_from_cuda1():
    """torch.save tags every storage `cuda:1`, as on a worker training on its second GPU."""
    import torch.serialization as ser

    entry = (0, lambda obj: "cuda:1", lambda obj, location: None)
    ser._package_registry.insert(0, entry)
    try:
        yield
    finally:
        ser._package_registry.remove(entry)


def test_checkpoints_from_another_gpu_load_onto_the_cpu(tmp_path):
    saved = TrialCheckpoint(epoch=1, step=3, scheduler={}, model={"w": torch.arange(4.0)},
                            optimizer={"state": {}, "param_groups": []})
    with saved_from_cuda1():
        checkpoint.save(saved, tmp_path)
        part = nn.Sequential(nn.Linear(2, 2))
        opt = torch.optim.SGD(part.parameters(), lr=0.1)
        pipeline.save_part(part, opt, tmp_path, 0)
    with pytest.raises(RuntimeError, match="CUDA"):  # what torch.load does without map_location
        torch.load(tmp_path / checkpoint.CHECKPOINT_FILE, weights_only=True)
    loaded = load_checkpoint(tmp_path)
    assert loaded.model["w"].device.type == "cpu" and torch.equal(loaded.model["w"], torch.arange(4.0))
    fresh = nn.Sequential(nn.Linear(2, 2))
    pipeline.load_part(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1),
                       str(tmp_path / checkpoint.SHARDED_DIR), 0)
    assert torch.equal(fresh[0].weight, part[0].weight)


# ------------------------------------------------------------------ 9: fp16 scaler, bf16
def test_the_fp16_loss_scale_survives_a_checkpoint(tmp_path):
    fp16 = spec().model_copy(update={"precision": "16-mixed"})
    before = strategies.DataParallel(fp16, 0, 1, "cpu")
    model = before.prepare(nn.Linear(3, 2), lambda: nn.Linear(3, 2))
    before.start(torch.optim.SGD(model.parameters(), lr=0.1), None)
    before.scaler.load_state_dict({**before.scaler.state_dict(), "scale": 512.0,
                                   "_growth_tracker": 7})
    before.checkpoint(TrialCheckpoint(epoch=1, step=1, scheduler={}))(tmp_path)
    resume = load_checkpoint(tmp_path)
    after = strategies.DataParallel(fp16, 0, 1, "cpu")
    model = after.prepare(nn.Linear(3, 2), lambda: nn.Linear(3, 2))
    after.load(resume, torch.optim.SGD(model.parameters(), lr=0.1))
    assert after.scaler.get_scale() == 512.0
    assert after.scaler.state_dict()["_growth_tracker"] == 7
    # a checkpoint written before the field existed still loads, with a fresh scaler
    old = TrialCheckpoint.from_saved({k: v for k, v in resume.to_saved().items() if k != "scaler"})
    assert old.scaler is None
    fresh = strategies.DataParallel(fp16, 0, 1, "cpu")
    model = fresh.prepare(nn.Linear(3, 2), lambda: nn.Linear(3, 2))
    fresh.load(old, torch.optim.SGD(model.parameters(), lr=0.1))
    assert fresh.scaler.get_scale() == 65536.0


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    from dlopt.train.loop import fit

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(RuntimeError, match="Tesla T4 .cuda:1. has no native bf16"):
        fit(spec(precision="bf16-mixed"), lambda m, w: None, device="cuda:1")
    devices.check_precision("bf16-mixed", "cpu")  # the CPU runs bf16
    devices.check_precision("32", "cuda:0")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_gets_the_device_type():
    from dlopt.train.steps import autocast

    assert autocast("bf16-mixed", "cuda:1").device == "cuda"


# ------------------------------------------------------------------ 8: FSDP's mesh
def test_fsdp_mesh_follows_the_trial_device_not_cuda_presence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch._C, "_get_accelerator", lambda *a: torch.device("cuda"))
    with group("cpu:gloo"):
        fsdp = strategies.FullySharded(spec(), 0, 1, "cpu")  # as the loop builds it
        model = fsdp.prepare(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), None)
        assert {p.device_mesh.device_type for p in model.parameters()} == {"cpu"}
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        model(torch.randn(5, 4))  # CPU batches on a CPU model


# ------------------------------------------------------------------ 2: final model elsewhere
def final_state(stage_spec) -> State:
    """The final model on the CPU (gathered) while the trial's device is another (`meta`)."""
    exp = spec()
    data = load_data(exp.data, 0)
    model = models.build(exp.model, data.input_shape, data.out_features)
    return State(spec=exp, model=model, datasets=data, device="meta")


def test_static_calibration_runs_on_the_final_models_device():
    from dlopt import Quantize as QuantizeSpec

    state = final_state(None)
    stage = Quantize(QuantizeSpec(method="static", calibration_batches=2), state.spec)
    assert {b.device.type for b in stage._calibration(state)} == {"cpu"}
    stage.fit_end(state)
    assert stage.quantization["method"] == "static"


def test_distillation_agreement_runs_each_model_where_it_is():
    state = final_state(None)
    stage = Distill.__new__(Distill)  # no registry here: the teacher is set as setup would
    stage.files = types.SimpleNamespace(version="3")
    stage.teacher = models.build(state.spec.model, state.datasets.input_shape,
                                 state.datasets.out_features).eval()
    stage.fit_end(state)
    assert 0.0 <= state.compression.metrics["distill_teacher_agreement"] <= 1.0


# ------------------------------------------------------------------ 3: structured removal
def test_shrink_builds_its_indices_on_the_weights_device():
    conv_flat = nn.Linear(4 * 3, 5).to("meta")  # reads a flattened 4-channel map, 3 per channel
    keep = torch.tensor([0, 2], device="meta")
    assert shrink._columns(4, conv_flat, keep).device.type == "meta"
    shrink._shrink_in(conv_flat, 4, keep, 0.0)
    assert conv_flat.weight.shape == (5, 6) and conv_flat.weight.device.type == "meta"
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to("meta")
    shrink.resize(chain, {"0": 2})
    assert chain[0].weight.shape == (2, 3) and chain[2].weight.shape == (2, 2)


# ------------------------------------------------------------------ 5: latency on any device
class OnAnotherDevice(nn.Module):
    """A model whose weights live off the CPU (meta stands in for a GPU); `to("cpu")` gives a
    real copy, as moving a CUDA model does."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2, device="meta")

    def forward(self, x):
        return self.layer(x)

    def to(self, *args, **kwargs):
        cpu = nn.Linear(4, 2)
        return cpu if torch.device(args[0]).type == "cpu" else super().to(*args, **kwargs)


def test_latency_is_measured_for_models_off_the_cpu():
    model = OnAnotherDevice()
    assert devices.model_device(model).type == "meta"
    assert latency_ms(model, torch.randn(3, 4), repeats=3, warmup=1) > 0


def test_pinned_copies_only_for_cuda():
    x = torch.randn(2, 3)
    assert devices.to_device(x, "cpu") is x
    assert devices.device_type("cuda:3") == "cuda"


def test_deterministic_kernels_are_set_on_every_fit_and_undone_by_the_next(monkeypatch):
    """Resources(deterministic=True): torch's deterministic algorithms, no cuDNN autotuning, and
    cuBLAS's workspace setting on CUDA; the next fit without it turns them back."""
    import os

    from dlopt.ml.devices import configure_kernels
    from dlopt.spec.sections import Resources

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert Resources(deterministic=True).deterministic and not Resources().deterministic
    try:
        configure_kernels("cuda:0", False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        configure_kernels("cuda:0", True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        configure_kernels("cpu", False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        configure_kernels("cpu", False)
