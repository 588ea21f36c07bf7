"""Weight sharing: per-layer k-means codebooks, fine-tuned in the loop (Deep Compression).

Han et al. (2016), "Deep Compression", sec. 3: the non-zero values of each Linear/Conv weight
are clustered into 2**bits centroids (2**bits - 1 where the layer holds zeros, which keep a
centroid fixed at 0 so pruned weights stay pruned), initialized linearly over [min, max] (the
paper's best init). Each weight then holds its centroid's value. For the last
`finetune_epochs` the centroids are trained: after backward the gradients of the weights
sharing a centroid are summed and that sum is given to each of them (`sum_by_cluster`), so
with SGD every weight of a cluster moves by the same step, which is the centroid's update;
after the step each cluster is re-tied to its mean (`retie`), which is a no-op for plain SGD
and projects back the per-element differences momentum, Adam or weight decay introduce.

At fit_end every weight holds at most 2**bits distinct values; the compact artifact stores
such a tensor as codebook + entropy-coded indices (dlopt.artifact.compact, layout
"codebook"), so nothing here decides the file format.

The k-means is written here rather than taken from scikit-learn: in 1-D the nearest centroid is
exactly a `torch.bucketize` against the midpoints of the sorted centroids, so Lloyd's
algorithm is ten lines of torch, runs on the weights' own device, and needs neither a
NumPy round trip nor scikit-learn on the workers. Under DDP every rank holds the same weights
and gradients, so the deterministic clustering agrees across ranks.
"""
from __future__ import annotations

import torch
from torch import nn

from dlopt.stages import CompressionStage, State
from dlopt.stages.pruning.masks import PRUNABLE, make_permanent


# ------------------------------------------------------------------ k-means in 1-D (pure)
def linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """k centroids spaced linearly over [min, max] of `values` (Deep Compression, sec. 3.2)."""
    return torch.linspace(values.min().item(), values.max().item(), k, dtype=values.dtype,
                          device=values.device)


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted `centroids` for each value (exact in 1-D)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, mids)


def update(values: torch.Tensor, idx: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each centroid moved to the mean of its members; an empty one stays where it was."""
    k = len(centroids)
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).scatter_add_(0, idx, values)
    counts = torch.bincount(idx, minlength=k).to(values.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 100
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm from the linear init: (sorted centroids, each value's index)."""
    values = values.detach().reshape(-1)
    k = max(1, min(k, values.numel()))
    centroids = linear_init(values, k)
    idx = assign(values, centroids)
    for _ in range(iterations):
        centroids = torch.sort(update(values, idx, centroids)).values
        new = assign(values, centroids)
        if torch.equal(new, idx):
            break
        idx = new
    return centroids, idx


def share_weight(w: torch.Tensor, bits: int, iterations: int = 100
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(codebook, index per element, index of the fixed zero or -1) for one weight. Zeros
    (pruned weights) get their own centroid, fixed at 0; the rest share 2**bits - 1 (or
    2**bits in a layer without zeros) k-means centroids."""
    flat = w.detach().reshape(-1)
    nonzero = flat != 0
    k = 2 ** bits
    if bool(nonzero.all()):
        centroids, idx = kmeans_1d(flat, k, iterations)
        return centroids, idx, -1
    if not bool(nonzero.any()):
        return torch.zeros(1, dtype=flat.dtype, device=flat.device), \
            torch.zeros_like(flat, dtype=torch.long), 0
    centroids, sub = kmeans_1d(flat[nonzero], k - 1, iterations)
    codebook = torch.cat([torch.zeros(1, dtype=flat.dtype, device=flat.device), centroids])
    idx = torch.zeros_like(flat, dtype=torch.long)
    idx[nonzero] = sub + 1
    return codebook, idx, 0


def from_tied(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The same triple read back from a weight that already holds shared values (a resumed
    run): its distinct values are the codebook."""
    codebook, idx = torch.unique(w.detach().reshape(-1), return_inverse=True)
    zero = (codebook == 0).nonzero()
    return codebook, idx, int(zero[0]) if len(zero) else -1


def sum_by_cluster(grad: torch.Tensor, idx: torch.Tensor, k: int, zero: int) -> torch.Tensor:
    """Each element's gradient replaced by the sum over its cluster (the centroid's gradient);
    the fixed zero cluster gets none."""
    sums = torch.zeros(k, dtype=grad.dtype, device=grad.device)
    sums.scatter_add_(0, idx, grad.reshape(-1))
    if zero >= 0:
        sums[zero] = 0
    return sums[idx].reshape(grad.shape)


def retie(w: torch.Tensor, idx: torch.Tensor, k: int, zero: int) -> torch.Tensor:
    """Each element set to its cluster's mean (the fixed zero cluster to 0). The mean is taken
    as the cluster's max plus the mean offset from it, so a cluster already tied comes back
    bit for bit (a plain sum / count would round)."""
    flat = w.detach().reshape(-1)
    top = torch.full((k,), float("-inf"), dtype=flat.dtype, device=flat.device)
    top = top.scatter_reduce(0, idx, flat, reduce="amax")
    offsets = torch.zeros(k, dtype=flat.dtype, device=flat.device)
    offsets.scatter_add_(0, idx, flat - top[idx])
    counts = torch.bincount(idx, minlength=k).to(flat.dtype).clamp(min=1)
    means = torch.where(torch.isfinite(top), top + offsets / counts, torch.zeros_like(top))
    if zero >= 0:
        means[zero] = 0
    return means[idx].reshape(w.shape)


# ------------------------------------------------------------------ the stage
def _param(m: nn.Module) -> torch.nn.Parameter:
    """The trained tensor: `weight_orig` under torch's pruning reparametrization."""
    return m.weight_orig if hasattr(m, "weight_orig") else m.weight


class Share(CompressionStage):
    name = "share"

    def __init__(self, spec, experiment):
        self.spec = spec
        self.start = max(experiment.epochs - spec.finetune_epochs, 0)  # 0-based epoch
        self.active = False
        self._model: nn.Module | None = None
        self._clusters: list[tuple[nn.Module, torch.Tensor, int, int]] = []

    def _layers(self) -> list[nn.Module]:
        return [m for m in self._model.modules() if isinstance(m, PRUNABLE)]

    @torch.no_grad()
    def _cluster(self, tied: bool = False) -> None:
        self._clusters = []
        for m in self._layers():
            p = _param(m)
            if tied:
                codebook, idx, zero = from_tied(p)
            else:
                codebook, idx, zero = share_weight(p, self.spec.bits)
                p.copy_(codebook[idx].reshape(p.shape))
            self._clusters.append((m, idx, len(codebook), zero))
        self.active = True

    def setup(self, state: State) -> None:
        self._model = state.model
        if self.start == 0:
            self._cluster()

    def epoch_end(self, state: State) -> None:
        if not self.active and state.epoch + 1 >= self.start:
            self._cluster()

    @torch.no_grad()
    def after_backward(self, state: State) -> None:
        for m, idx, k, zero in self._clusters:
            p = _param(m)
            if p.grad is not None:
                p.grad.copy_(sum_by_cluster(p.grad, idx, k, zero))

    @torch.no_grad()
    def after_step(self, state: State) -> None:
        for m, idx, k, zero in self._clusters:
            p = _param(m)
            p.copy_(retie(p, idx, k, zero))

    def fit_end(self, state: State) -> None:
        if not self.active:
            self._model = state.model
            self._cluster()
        make_permanent(state.model)
        self.after_step(state)  # exact ties in the plain weights the artifact packs
        state.add_compression_metrics({
            "share_bits": self.spec.bits,
            "share_max_clusters": max((k for _, _, k, _ in self._clusters), default=0)})

    def state_dict(self) -> dict:
        return {"active": self.active}

    def load_state_dict(self, data: dict) -> None:
        # The loop loads the checkpoint's (already tied) weights before this; re-read them.
        if data.get("active") and self._model is not None:
            self._cluster(tied=True)
