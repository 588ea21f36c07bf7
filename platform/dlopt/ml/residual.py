"""Structured pruning of graph models (residual nets, a user's torch.fx-traceable model).

A residual add ties the channels of every tensor it sums: removing channel c from one branch
means removing it from the other branch, the add, and every layer that reads the sum. The
coupled tensors form a dependency group; torch-pruning's `DependencyGraph` finds them by
tracing one forward pass, and `Group.prune` cuts the same indices out of every member (conv
out/in channels, BatchNorm entries, Linear columns). Why torch-pruning and not hand-written
analysis: it already handles adds, concatenations, flattens and BN (docs/architecture.md,
"Catalogs" and the standards' "use what the libraries do").

Why the chain models (`mlp`, `lenet5`, `cnn`) keep dlopt.ml.shrink: their removal folds
act(0) of a removed neuron into the next bias (exact for any activation), which torch-pruning
does not do; graph models here need an activation with act(0) == 0 (spec checks), so a
removed channel outputs exactly zero and the pruned net equals the masked one.

Saving: the artifact records the pruned parameter/buffer shapes (`shapes`); loading builds the
spec's dense model and `fit`s its modules to those shapes before the state dict is loaded, so
reloading needs neither torch-pruning nor the pruning history.
GPU-correct by construction: indices are built on the weights' device.
"""
from __future__ import annotations

import torch
from torch import nn

_WIDTH_ATTRS = {nn.Conv1d: ("out_channels", "in_channels"), nn.Conv2d: ("out_channels", "in_channels"),
                nn.Conv3d: ("out_channels", "in_channels"), nn.Linear: ("out_features", "in_features")}


def check_traceable(model: nn.Module) -> None:
    """ValueError with torch.fx's reason when the model's layer graph cannot be traced."""
    try:
        torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{type(model).__name__} is not torch.fx-traceable, so its channel "
                         f"dependencies are unknown: {first}") from e


def _output_layers(model: nn.Module) -> list[nn.Module]:
    """The last Linear/Conv (the class scores) keeps its width."""
    layers = [m for m in model.modules() if isinstance(m, tuple(_WIDTH_ATTRS))]
    return layers[-1:]


def graph(model: nn.Module, example: torch.Tensor):
    """torch-pruning's DependencyGraph of `model` (one traced forward, eval mode)."""
    import torch_pruning as tp  # here, not at the top: loading a saved model needs only `fit`

    check_traceable(model)
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():  # torch-pruning traces the autograd graph
            return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    finally:
        model.train(was)


def plan(model: nn.Module, example: torch.Tensor, ratio: float, dg=None,
         removed: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """{root module name: its output channels to remove}, one entry per dependency group: the
    `ratio` of the group's channels with the smallest summed L1 magnitude over the group.

    `removed` (an earlier plan) is kept: those channels rank first, so masks only grow while a
    schedule raises the ratio. `dg`: a graph already built for this model (the structure does
    not change while training, only the values)."""
    import torch_pruning as tp

    dg = graph(model, example) if dg is None else dg
    names = {m: n for n, m in model.named_modules()}
    importance = tp.importance.MagnitudeImportance(p=1)
    out: dict[str, list[int]] = {}
    for group in dg.get_all_groups(ignored_layers=_output_layers(model)):
        root = names[group[0].dep.target.module]
        with torch.no_grad():
            scores = importance(group).double().clone()
        n = len(scores)
        keep = set((removed or {}).get(root, []))
        if keep:
            scores[sorted(keep)] = -torch.inf
        k = max(min(int(round(ratio * n)), n - 1), len(keep))  # one channel stays: connected
        if k > 0:
            out[root] = sorted(torch.argsort(scores, stable=True)[:k].tolist())
    return out


def _groups(model: nn.Module, dg, roots: dict[str, list[int]]):
    mods = dict(model.named_modules())
    for root, idxs in roots.items():
        m = mods[root]
        yield dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, idxs)


def members(model: nn.Module, dg, roots: dict[str, list[int]]) -> dict[str, list[int]]:
    """{module name: output indices} every module whose outputs a plan removes (conv, BN,
    linear): what a masked model holds at zero."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, list[int]] = {}
    for group in _groups(model, dg, roots):
        for dep, gidx in group.items:
            if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names:
                out[names[dep.target.module]] = sorted(int(i) for i in gidx)
    return out


@torch.no_grad()
def zero_channels(model: nn.Module, masked: dict[str, list[int]]) -> None:
    """Hold the masked output channels at zero: weight rows and bias entries (BN: its affine
    weight and bias too), so each such channel outputs exactly zero (act(0) == 0) and cutting
    it (`cut`) changes no output. On the parameters' own device."""
    mods = dict(model.named_modules())
    for name, idxs in masked.items():
        m = mods[name]
        for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if isinstance(p, torch.Tensor) and p.dim() >= 1:
                at = torch.as_tensor(idxs, dtype=torch.long, device=p.device)
                # a transposed conv's weight is (in, out/groups, ...): its outputs are dim 1
                dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) and p.dim() > 1 else 0
                p.index_fill_(dim, at, 0)


def cut(model: nn.Module, example: torch.Tensor, roots: dict[str, list[int]]) -> None:
    """Remove the channels of a plan from `model` in place (every member of each group)."""
    dg = graph(model, example)
    for group in _groups(model, dg, roots):  # one at a time: each on the graph as pruned so far
        group.prune()


def prune_channels(model: nn.Module, example: torch.Tensor, ratio: float) -> dict[str, list[int]]:
    """Remove `ratio` of the channels of every dependency group from `model` in place.

    Returns {module name: removed output indices} for every module whose outputs shrank (conv,
    BN, linear), which is what a masked model zeroes (tests compare the two)."""
    dg = graph(model, example)
    roots = plan(model, example, ratio, dg)
    removed = members(model, dg, roots)
    cut(model, example, roots)
    return removed


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shapes of every parameter and buffer, for the artifact's meta (`fit` rebuilds them)."""
    return {n: list(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}


@torch.no_grad()
def fit(model: nn.Module, saved: dict[str, list[int]]) -> nn.Module:
    """Give a freshly built dense model the pruned shapes in `saved` (values: load them next)."""
    mods = dict(model.named_modules())
    for name, shape in saved.items():
        owner, _, attr = name.rpartition(".")
        m = mods[owner]
        t = getattr(m, attr)
        if t is None or list(t.shape) == shape:
            continue
        new = torch.zeros(shape, dtype=t.dtype, device=t.device)
        if isinstance(t, nn.Parameter):
            setattr(m, attr, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            setattr(m, attr, new)
        _fix_widths(m)
    return model


def _fix_widths(m: nn.Module) -> None:
    for kind, (out_attr, in_attr) in _WIDTH_ATTRS.items():
        if isinstance(m, kind):
            setattr(m, out_attr, m.weight.shape[0])
            setattr(m, in_attr, m.weight.shape[1] * getattr(m, "groups", 1))
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
