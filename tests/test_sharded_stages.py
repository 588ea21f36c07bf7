"""Stages on FSDP-sharded weights, without Ray: two gloo ranks in separate processes.

Shown on DTensor shards: the L1/L2 penalty equals the full model's (value and gradient);
pruning masks computed from the shards equal the masks of the full weights, each rank holds
half of each mask, and the zeros land in the gathered full state dict; the Prune stage keeps
pruned weights at zero through optimizer steps; QAT prepared before sharding, with pruning,
trains under FSDP like under DDP (same losses, same sparsity) into the same int8 artifact.
"""
from __future__ import annotations

import json

import pytest
from dlopt_testing import run_gloo_ranks
from dlopt.spec import Experiment

RANK_CODE = r"""
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from torch.nn.parallel import DistributedDataParallel as DDP
from dlopt.ml import models
from dlopt.spec import Experiment, Model, Prune as PruneSpec
from dlopt.stages import State
from dlopt.stages.pruning import masks as pruning
from dlopt.stages.pruning import sharded as prune_sharded
from dlopt.stages.pruning import stage as prune
from dlopt.stages.regularization import l1_l2_penalty, weight_params
from dlopt.train import sharding
from dlopt.train.loop import fit
rank, out, spec_json = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
dist.init_process_group("gloo", rank=rank, world_size=2)
res = {}

def fresh(seed=0):
    torch.manual_seed(seed)
    return models.build(Model(arch="mlp", hidden=[48, 24]), (64,), 10)

# --- penalty: value and gradient on shards vs the full model
full = fresh()
ref = l1_l2_penalty(weight_params(full), 1e-3, 1e-2)
ref.backward()
sh = sharding.shard(fresh())
pen = l1_l2_penalty(weight_params(sh), 1e-3, 1e-2)
pen.backward()
res["penalty"] = [pen.item(), ref.item(), type(pen).__name__]
res["penalty_grad_maxdiff"] = max(
    (p.grad.full_tensor() - q.grad).abs().max().item()
    for p, q in zip(weight_params(sh), weight_params(full)))

# --- masks from shards vs masks of the full weights (global, layer, structured rows)
for scope, structured in (("global", False), ("layer", False), ("layer", True)):
    full, sh = fresh(1), sharding.shard(fresh(1))
    fm = [m for _, m in pruning.targets(full, structured)]
    sm = [m for _, m in pruning.targets(sh, structured)]
    expect = pruning.masks_from([m.weight.detach() for m in fm],
                              [torch.ones_like(m.weight) for m in fm], 0.6, scope, structured)
    masks = prune_sharded.ShardedMasks()
    agree = masks.compute(sm, 0.6, scope, structured, "l1", 2)
    got = [k.full_tensor() for k in masks.masks]
    gathered = sharding.full_state_dict(sh)  # what export sees (rank 0)
    res[f"masks_{scope}_{structured}"] = {
        "agree": agree, "equal": all(torch.equal(a, b) for a, b in zip(got, expect)),
        "local_numel": [k.to_local().numel() for k in masks.masks],
        "full_numel": [k.numel() for k in masks.masks],
        "zeros_match": rank != 0 or all(
            torch.equal(gathered[f"{n}.weight"] == 0, e == 0)
            for (n, _), e in zip(pruning.targets(full, structured), expect)),
        "sparsity": sum((e == 0).sum().item() for e in expect) / sum(e.numel() for e in expect)}

# --- the Prune stage on a sharded model: pruned weights stay zero through Adam steps
spec = Experiment.model_validate({**spec_json, "resources": {"num_workers": 2, "strategy": "fsdp"}})
sh = sharding.shard(fresh(2))
opt = torch.optim.Adam(sh.parameters(), lr=0.05)
stage = prune.Prune(PruneSpec(sparsity=0.7, start_epoch=0), spec)
state = State(spec=spec, model=sh, optimizer=opt, rank=rank, world=2, steps_per_epoch=5)
stage.setup(state)
x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
for step in range(1, 6):
    torch.nn.functional.cross_entropy(sh(x), y).backward()
    if step == 5:  # the pruned weights (exact zeros) got no gradient, as under DDP's reparam
        res["pruned_grad_max"] = max(
            m.weight.grad.full_tensor()[m.weight.full_tensor() == 0].abs().max().item()
            for _, m in pruning.targets(sh, False))
        res["kept_grad_max"] = max(m.weight.grad.full_tensor().abs().max().item()
                                   for _, m in pruning.targets(sh, False))
    opt.step(); opt.zero_grad()
    state.step = step
    stage.after_step(state)
w = [m.weight.full_tensor() for _, m in pruning.targets(sh, False)]
res["stage"] = {"zeros": sum((t == 0).sum().item() for t in w) / sum(t.numel() for t in w),
                "mismatches": stage.rank_mismatches, "masks_sharded": all(
                    k.to_local().numel() < k.numel() for k in stage.sharded.masks)}

# --- a restart after the masks were set (an FSDP run resumed from its checkpoint): Adam's
# moments of the pruned weights are not zero, and the masks must be rebuilt before they act
sh = sharding.shard(fresh(3))
opt = torch.optim.Adam(sh.parameters(), lr=0.05)
state = State(spec=spec, model=sh, optimizer=opt, rank=rank, world=2, steps_per_epoch=5)

def loop_step(stage, n):  # the loop's event order (dlopt.train.strategies.DataParallel)
    torch.nn.functional.cross_entropy(sh(x), y).backward()
    stage.run("after_backward", state)
    opt.step(); opt.zero_grad()
    state.step = n
    stage.run("after_step", state)

first = prune.Prune(PruneSpec(sparsity=0.7, start_epoch=1), spec)
first.setup(state)
for n in range(1, 6):  # pruned at step 5, after 5 steps of Adam moments
    loop_step(first, n)
restarted = prune.Prune(PruneSpec(sparsity=0.7, start_epoch=1), spec)
restarted.load_state_dict(first.state_dict())
restarted.setup(state)
for n in range(6, 9):
    loop_step(restarted, n)
w = [m.weight.full_tensor() for _, m in pruning.targets(sh, False)]
res["restarted_zeros"] = sum((t == 0).sum().item() for t in w) / sum(t.numel() for t in w)

# --- QAT: FSDP vs DDP through the real loop (fake quant on in the 2nd epoch)
for strategy in ("ddp", "fsdp"):
    s = Experiment.model_validate({**spec_json, "resources": {"num_workers": 2, "strategy": strategy}})
    reports = []
    fit(s, lambda m, w: reports.append(m), rank=rank, world=2,
        wrap=DDP if strategy == "ddp" else (lambda m: m))
    res[f"qat_{strategy}"] = reports
dist.destroy_process_group()
(out / f"rank{rank}.json").write_text(json.dumps(res))
"""

SPEC = {"name": "fsdp-stages", "seed": 5, "epochs": 2,
        "data": {"dataset": "digits", "batch_size": 64, "test_fraction": 0.0},
        "model": {"arch": "mlp", "hidden": [48, 24]},
        "optimizer": {"name": "adam", "lr": 0.003},
        "regularization": {"grad_clip_norm": 0.5},  # its norm must not see pruned weights
        "compression": [{"stage": "prune", "sparsity": 0.6, "start_epoch": 1},
                        {"stage": "quantize", "method": "qat", "qat_epochs": 1}]}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_stages")
    run_gloo_ranks(RANK_CODE, str(out), json.dumps(SPEC))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_penalty_on_shards_equals_full_model_penalty(ranks):
    for r in ranks:
        value, full, kind = r["penalty"]
        assert kind == "Tensor"  # a plain scalar: it adds to the plain loss
        assert value == pytest.approx(full, rel=1e-6)
        assert r["penalty_grad_maxdiff"] < 1e-6


@pytest.mark.parametrize("key", ["masks_global_False", "masks_layer_False", "masks_layer_True"])
def test_sharded_masks_equal_full_masks_and_are_halved(ranks, key):
    for r in ranks:
        m = r[key]
        assert m["agree"] and m["equal"] and m["zeros_match"], m
        for local, full in zip(m["local_numel"], m["full_numel"]):
            assert abs(local - full / 2) <= full / 10 + 1, (local, full)
        expected = 0.6 if "False" in key else None  # rows: the output layer is spared
        if expected is not None:
            assert m["sparsity"] == pytest.approx(expected, abs=1e-3)
    # the two ranks' shards together are each mask exactly once
    for a, b, full in zip(ranks[0][key]["local_numel"], ranks[1][key]["local_numel"],
                          ranks[0][key]["full_numel"]):
        assert a + b == full


def test_prune_stage_keeps_pruned_shards_at_zero(ranks):
    for r in ranks:
        assert r["stage"]["zeros"] == pytest.approx(0.7, abs=1e-3)
        assert r["stage"]["mismatches"] == 0 and r["stage"]["masks_sharded"]
        assert r["pruned_grad_max"] == 0 < r["kept_grad_max"]


def test_a_restarted_prune_stage_keeps_the_pruned_shards_at_zero(ranks):
    for r in ranks:
        assert r["restarted_zeros"] == pytest.approx(0.7, abs=1e-3)


def test_pruned_qat_under_fsdp_matches_ddp(ranks):
    r0 = ranks[0]
    ddp, fsdp = r0["qat_ddp"], r0["qat_fsdp"]
    assert [m["epoch"] for m in fsdp if not m.get("final")] == [1, 2]
    for a, b in zip(ddp, fsdp):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a["epoch"])
    assert fsdp[-1]["final"] == 1 and fsdp[-1]["model_bytes"] == ddp[-1]["model_bytes"]
    assert fsdp[-1]["compressed_val_accuracy"] == pytest.approx(
        ddp[-1]["compressed_val_accuracy"], abs=0.02)
    assert fsdp[-1]["compressed_val_accuracy"] > 0.5
    # pruned in epoch 2 while fake-quantized: the same sparsity in both int8 artifacts
    assert fsdp[-1]["sparsity"] == pytest.approx(ddp[-1]["sparsity"], abs=1e-3)
    assert fsdp[-1]["sparsity"] >= 0.6 - 1e-3


def test_fsdp_accepts_penalties_prune_and_qat():
    spec = Experiment(name="x", resources={"strategy": "fsdp", "num_workers": 2},
                      regularization={"l1": 1e-5, "l2": 1e-4},
                      compression=[{"stage": "prune", "sparsity": 0.5, "start_epoch": 1},
                                   {"stage": "quantize", "method": "qat"}])
    assert [s.stage for s in spec.compression] == ["prune", "quantize"]
