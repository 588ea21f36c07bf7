"""Pipeline model parallelism (dlopt.train.pipeline) without Ray: two gloo ranks in separate
processes run the loop with the pipeline strategy; its losses equal one process training the
whole model, a run resumes from its per-stage checkpoint, and the final artifact is the usual
one. The spec refuses what a pipeline cannot run."""
from __future__ import annotations

import json

import pytest
import torch
from dlopt_testing import run_gloo_ranks
from dlopt.spec import Experiment

RANK_CODE = r"""
import json, shutil, sys, tempfile, torch, torch.distributed as dist
from pathlib import Path
from dlopt.spec import Experiment
from dlopt.train.loop import fit, load_checkpoint
rank, out, spec_json = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
dist.init_process_group("gloo", rank=rank, world_size=2)
spec = Experiment.model_validate(spec_json)

def run(tag, resume=None):
    reports = []
    def report(metrics, write):
        reports.append(metrics)
        if write is not None:
            name = "final" if metrics.get("final") else f"epoch{metrics['epoch']}"
            with tempfile.TemporaryDirectory() as d:  # as Ray Train merges every rank's files
                write(Path(d))
                shutil.copytree(d, out / tag / name, dirs_exist_ok=True)
    fit(spec, report, rank=rank, world=2, resume=resume)
    return reports

result = {"pipe": run("pipe")}
ckpt = out / "pipe" / "epoch1"
resume = load_checkpoint(ckpt)  # with its sharded part (TrialCheckpoint.sharded)
result["resumed"] = run("resumed", resume)
dist.destroy_process_group()
(out / f"rank{rank}.json").write_text(json.dumps(result))
"""

SPEC = {"name": "pipe-unit", "seed": 4, "epochs": 2,
        "data": {"dataset": "digits", "batch_size": 50, "test_fraction": 0.0},
        "model": {"arch": "mlp", "hidden": [64, 32]},
        "optimizer": {"name": "adam", "lr": 0.003},
        "regularization": {"grad_clip_value": 1.0},
        "compression": [{"stage": "quantize", "method": "dynamic"}],
        "resources": {"num_workers": 2, "strategy": "pipeline"}}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    run_gloo_ranks(RANK_CODE, str(out), json.dumps(SPEC))
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same spec trained by the plain loop in one process (the whole model, all data)."""
    from dlopt.train.loop import fit

    out = tmp_path_factory.mktemp("single")
    spec = Experiment.model_validate({**SPEC, "resources": {"num_workers": 1}})
    reports = []

    def report(metrics, write):
        reports.append(metrics)
        if write is not None and metrics.get("final"):
            write(out)
    fit(spec, report, rank=0, world=1)
    return out, reports


def test_pipeline_losses_equal_single_process(ranks, single):
    _, (r0, r1) = ranks
    _, ref = single
    pipe = [m for m in r0["pipe"] if not m.get("final")]
    assert [m["epoch"] for m in pipe] == [1, 2]
    for a, b in zip(ref, pipe):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a["epoch"])
    # both ranks report the same metrics (validation runs on the gathered model)
    assert [m["val_loss"] for m in r1["pipe"]] == [m["val_loss"] for m in r0["pipe"]]


def test_each_rank_holds_only_its_stage(ranks):
    _, (r0, _) = ranks
    final = r0["pipe"][-1]
    # 64*64+64 | 64*32+32 + 32*10+10 of 6570 weights: the larger stage holds 63%
    assert final["stage_fraction_max"] == pytest.approx(4160 / 6570, abs=1e-6)


def test_resumes_from_per_stage_checkpoint(ranks):
    out, (r0, _) = ranks
    files = sorted(p.name for p in (out / "pipe" / "epoch1" / "sharded").iterdir())
    assert files == ["stage0.pt", "stage1.pt"]  # each rank's stage, merged into one dir
    resumed = [m for m in r0["resumed"] if not m.get("final")]
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["train_loss"] == pytest.approx(r0["pipe"][1]["train_loss"], rel=1e-6)


def test_final_artifact_same_as_single_process(ranks, single):
    from dlopt.artifact import files as artifact
    from dlopt.ml import data

    out, (r0, _) = ranks
    single_dir, ref = single
    metas = [json.loads((d / "meta.json").read_text()) for d in (out / "pipe" / "final", single_dir)]
    assert metas[0] == metas[1] and metas[0].get("format") not in (None, "dense")
    assert r0["pipe"][-1]["model_bytes"] == ref[-1]["model_bytes"]
    x = data.load(Experiment.model_validate(SPEC).data, SPEC["seed"]).val.x
    with torch.no_grad():
        a = artifact.build_from_dir(out / "pipe" / "final")(x)
        b = artifact.build_from_dir(single_dir)(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.98


def test_split_balances_parameters():
    from dlopt.ml import models
    from dlopt.spec import Model
    from dlopt.train import pipeline

    model = models.build(Model(arch="mlp", hidden=[64, 32, 16]), (64,), 10)
    # Flatten, L(64,64), ReLU, L(64,32), ReLU, L(32,16), ReLU, L(16,10)
    assert pipeline.split(model, 2) == [3]
    cuts = pipeline.split(model, 4)
    assert cuts == [3, 5, 7]  # one Linear per stage when there are as many stages as Linears
    parts = [pipeline.part(model, cuts, r) for r in range(4)]
    assert sum(len(p) for p in parts) == len(model)
    assert list(parts[1].state_dict()) == ["3.weight", "3.bias"]  # names of the full model
    assert [pipeline.microbatches(n) for n in (64, 30, 23, 1)] == [4, 3, 1, 1]


@pytest.mark.parametrize("extra, field", [
    ({"model": {"arch": "lenet5"}}, "model.arch"),
    ({"resources": {"strategy": "pipeline", "num_workers": 3}}, "resources.num_workers"),
    ({"regularization": {"l2": 1e-4}}, "regularization.l2"),
    ({"regularization": {"grad_clip_norm": 1.0}}, "regularization.grad_clip_norm"),
    ({"precision": "bf16-mixed"}, "precision"),
    ({"compression": [{"stage": "prune", "sparsity": 0.5, "start_epoch": 1}]}, "compression[0]"),
    ({"compression": [{"stage": "quantize", "method": "qat"}]}, "compression[0]"),
])
def test_pipeline_refuses_what_it_cannot_run(extra, field):
    spec = {"name": "x", "model": {"arch": "mlp", "hidden": [32]},
            "resources": {"strategy": "pipeline", "num_workers": 2}, **extra}
    with pytest.raises(ValueError) as err:
        Experiment.model_validate(spec)
    lines = [line.removeprefix("  Value error, ") for line in str(err.value).splitlines()]
    assert any(line.startswith(f"{field}:") and "pipeline" in line for line in lines), lines


def test_pipeline_accepts_a_sequential_model():
    spec = Experiment.model_validate(SPEC)
    assert spec.resources.strategy == "pipeline"
