"""Weight sharing (dlopt.stages.sharing): the 1-D k-means, the centroid gradients, the codebook
layout of the compact artifact, the spec's checks, and the stage in the real training loop
(no Ray): at most 2**bits values per layer, a smaller artifact reloading exactly, resume."""
import subprocess
import sys

import pytest
import torch
from dlopt import Data, Experiment, Model, Optimizer, Prune, Quantize, Resources, Share, Tracking
from dlopt.artifact import compact
from dlopt.artifact.files import build_from_dir
from dlopt.ml.data import load
from dlopt.spec.checks import cross_field_problems
from dlopt.stages import sharing
from dlopt.train.loop import fit, load_checkpoint
from torch import nn


# ------------------------------------------------------------------ pure functions
def test_kmeans_1d_starts_linear_and_converges_to_the_cluster_means():
    values = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1, 9.9, 10.0])
    assert torch.equal(sharing.linear_init(values, 3), torch.tensor([0.0, 5.0, 10.0]))
    centroids, idx = sharing.kmeans_1d(values, 3)
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert torch.allclose(centroids, torch.tensor([0.1, 5.05, 9.95]))
    # assignment is the nearest centroid, a tie going to the lower one
    assert sharing.assign(torch.tensor([2.5, 2.49, 7.6]), torch.tensor([0.0, 5.0, 10.0])
                          ).tolist() == [0, 0, 2]


def test_share_weight_keeps_zeros_on_a_fixed_centroid_and_uses_at_most_2_pow_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 32) * (torch.rand(64, 32) > 0.7)
    codebook, idx, zero = sharing.share_weight(w, 3)
    assert len(codebook) == 8 and codebook[zero] == 0
    shared = codebook[idx].reshape(w.shape)
    assert torch.equal(shared == 0, w == 0)  # pruned stay pruned, nothing else becomes 0
    assert len(torch.unique(shared)) <= 8
    dense = torch.randn(100)
    codebook, idx, zero = sharing.share_weight(dense, 2)
    assert zero == -1 and len(codebook) == 4
    # the k-means assignment is never worse than the linear init's
    init = sharing.linear_init(dense, 4)
    assert ((codebook[idx] - dense) ** 2).sum() <= ((init[sharing.assign(dense, init)] - dense)
                                                     ** 2).sum()


def test_centroid_gradient_is_the_sum_over_its_cluster_and_sgd_keeps_weights_tied():
    idx = torch.tensor([0, 1, 1, 2, 2, 2])
    grad = torch.tensor([5.0, 1.0, 2.0, 1.0, 1.0, 1.0])
    # cluster 0 is the fixed zero: no gradient
    assert sharing.sum_by_cluster(grad, idx, 3, zero=0).tolist() == [0, 3, 3, 3, 3, 3]
    w = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    stepped = w - 0.1 * sharing.sum_by_cluster(grad, idx, 3, zero=0)
    assert torch.equal(sharing.retie(stepped, idx, 3, 0), stepped)  # SGD: still tied
    drifted = torch.tensor([0.3, 1.0, 2.0, 2.0, 3.0, 4.0])
    assert sharing.retie(drifted, idx, 3, 0).tolist() == [0, 1.5, 1.5, 3, 3, 3]


def test_from_tied_reads_back_the_clusters():
    w = torch.tensor([[0.5, 0.0], [-1.0, 0.5]])
    codebook, idx, zero = sharing.from_tied(w)
    assert codebook.tolist() == [-1.0, 0.0, 0.5] and zero == 1
    assert torch.equal(codebook[idx].reshape(2, 2), w)


# ------------------------------------------------------------------ the artifact
def _lenet300(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                      nn.Linear(100, 10))
    with torch.no_grad():  # Deep Compression's LeNet-300-100 sparsities, then 5 bits
        for layer, s in zip([m[0], m[2], m[4]], [0.92, 0.91, 0.74]):
            w = layer.weight
            w.mul_(w.abs() > w.abs().flatten().kthvalue(int(s * w.numel())).values)
            codebook, idx, _ = sharing.share_weight(w, 5)
            w.copy_(codebook[idx].reshape(w.shape))
    return m


def test_codebook_layout_is_lossless_and_over_40x_smaller_on_a_pruned_shared_lenet(tmp_path):
    m = _lenet300()
    tensors, entries = compact.pack(m)
    assert {k for k, e in entries.items() if e["layout"] == "codebook"} == {
        "0.weight", "2.weight", "4.weight"}
    data = compact.to_bytes(tensors, entries)
    dense = sum(t.numel() * 4 for t in m.state_dict().values())
    assert dense / len(data) > 40
    path = tmp_path / compact.WEIGHTS
    path.write_bytes(data)
    state, _, _ = compact.read(path)
    for key, value in m.state_dict().items():
        assert torch.equal(state[key], value), key


def test_unshared_weights_never_take_the_codebook_layout():
    torch.manual_seed(0)
    _, entries = compact.pack(nn.Linear(64, 32))
    assert entries == {}  # dense, as before
    _, entries = compact.pack(nn.Linear(4, 3))  # fewer elements than a codebook pays for
    assert entries == {}


# ------------------------------------------------------------------ the spec
def _spec(compression, epochs=4, **kw):
    return Experiment(name="s", epochs=epochs, data=Data(dataset="digits", batch_size=64),
                      model=Model(hidden=[48]),
                      optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
                      compression=compression, tracking=Tracking(report_every=1), **kw)


@pytest.mark.parametrize("compression,fragment", [
    ([Share(), Quantize()], "quantize would replace the codebook"),
    ([Share(finetune_epochs=1), Prune(start_epoch=0)], "share is listed before prune"),
    ([Share(finetune_epochs=9)], "compression[0].finetune_epochs: 9 fine-tuning epochs"),
    ([Prune(schedule="gradual", start_epoch=0, end_epoch=3), Share(finetune_epochs=2)],
     "pruning goes on until epoch 3"),
])
def test_spec_refuses_share_where_it_cannot_work(compression, fragment):
    with pytest.raises(ValueError) as err:
        _spec(compression)
    assert fragment in str(err.value)


def test_spec_refuses_share_under_fsdp_and_accepts_prune_then_share():
    with pytest.raises(ValueError, match="FSDP shards"):
        _spec([Share()], resources=Resources(num_workers=2, strategy="fsdp"))
    ok = _spec([Prune(schedule="gradual", start_epoch=0, end_epoch=2), Share(bits=4)])
    assert cross_field_problems(ok) == []
    with pytest.raises(ValueError):
        Share(bits=9)


def test_bits_is_a_search_domain_of_the_plan():
    from dlopt import tune
    from dlopt.spec.plan import make_plan

    plan = make_plan(_spec([Prune(start_epoch=0), Share(bits=tune.choice([3, 5]))]))
    assert plan.domains["compression.1.bits"] == {"domain": "choice", "values": [3, 5]}


# ------------------------------------------------------------------ in the loop
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


PRUNE_SHARE = [Prune(scope="global", sparsity=0.8, schedule="gradual", start_epoch=0,
                     end_epoch=2, frequency=2), Share(bits=4, finetune_epochs=2)]


def _val_accuracy(model):
    d = load(Data(dataset="digits"), 0)
    with torch.no_grad():
        return (model(d.val.x).argmax(1) == d.val.y).sum().item() / len(d.val.y)


def test_prune_then_share_trains_ties_weights_and_saves_a_smaller_exact_artifact(tmp_path):
    r = Reports(tmp_path)
    fit(_spec(PRUNE_SHARE), r)
    final = r.metrics[-1]
    assert final["share_bits"] == 4 and final["share_max_clusters"] <= 16
    assert final["model_bytes"] == final["share_model_bytes"]
    # 64-48-10 on digits: ~80% zeros and 4-bit indices against fp32 (pruning alone: ~2.5x)
    assert final["model_bytes"] < final["dense_bytes"] / 5
    assert final["compressed_val_accuracy"] > 0.85
    model = build_from_dir(r.dirs[-1])
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert len(torch.unique(m.weight)) <= 16
    assert _val_accuracy(model) == final["compressed_val_accuracy"]
    # the checkpoints of the fine-tuning epochs hold tied weights too (what resume re-reads)
    ckpt = load_checkpoint(r.dirs[-2])
    tied = [v for k, v in ckpt.model.items() if k.endswith("weight_orig")]
    assert tied and all(len(torch.unique(v)) <= 16 for v in tied)


def test_share_resumes_from_a_checkpoint_with_the_same_result(tmp_path):
    full = Reports(tmp_path / "full")
    fit(_spec(PRUNE_SHARE), full)
    part = Reports(tmp_path / "part")

    class Crash(Exception):
        pass

    def crash_after_epoch_3(metrics, write=None):
        part(metrics, write)
        if metrics.get("epoch") == 3:
            raise Crash  # mid fine-tuning (epochs 3 and 4)

    with pytest.raises(Crash):
        fit(_spec(PRUNE_SHARE), crash_after_epoch_3)
    rest = Reports(tmp_path / "rest")
    fit(_spec(PRUNE_SHARE), rest, resume=load_checkpoint(part.dirs[-1]))
    assert rest.metrics[-1]["compressed_val_accuracy"] == \
        full.metrics[-1]["compressed_val_accuracy"]
    assert rest.metrics[-1]["model_bytes"] == full.metrics[-1]["model_bytes"]


def test_shared_artifact_reloads_to_identical_predictions_in_a_fresh_process(tmp_path):
    r = Reports(tmp_path)
    fit(_spec(PRUNE_SHARE), r)
    directory = r.dirs[-1]
    x = load(Data(dataset="digits"), 0).val.x
    with torch.no_grad():
        here = build_from_dir(directory)(x)
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch; from dlopt.artifact.files import build_from_dir\n"
            f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
            f"with torch.no_grad(): torch.save(build_from_dir({str(directory)!r})(x), "
            f"{str(tmp_path / 'y.pt')!r})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "y.pt"), here)
