"""Cut pruned neurons and channels out of a chain network, and rebuild the smaller shapes.

Structured pruning zeroes whole output rows of a Linear (neurons) or Conv (filters) layer and
their biases (dlopt.stages.pruning). Such a unit outputs act(0) whatever the input, so it can be
removed: its row leaves the layer, its bias entry goes, and the next Linear/Conv layer loses the
input columns (channels) that read it; act(0) times those columns moves into the next bias,
which keeps the output exact for every activation when the next layer is a Linear (a Conv's
zero padding would make that contribution position-dependent: the spec refuses conv nets with
an activation whose act(0) != 0, dlopt.spec.checks). The result is a smaller dense network.

Why hand-written: torch.nn.utils.prune only masks, and torch has no API that shrinks a layer
and its successor; torch-pruning style dependency graphs are overkill for the catalog's chain
models (`mlp`, `lenet5`, `cnn`: nested nn.Sequential whose layers between two Linear/Conv
are element-wise, pooling or (un)flattening). Residual nets (`resnet`) are refused by the spec.

`remove(model)` shrinks in place and returns the per-layer output widths; `resize(model,
widths)` gives a freshly built model those shapes before its state dict is loaded
(dlopt.artifact.files.build_from_dir), so the saved artifact records only `widths` in meta.json.

Why in dlopt.ml and not in the pruning package (dlopt.stages.pruning): loading a saved model
(dlopt.artifact, below stages in the layers) needs `resize`, and imports only go downward;
it is plain torch on a module, no stage.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dlopt.ml.components import ACTIVATIONS

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules that pass channels through one to one (in eval mode).
PASS_THROUGH = (nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                nn.Unflatten, nn.Identity, *ACTIVATIONS.values())


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in execution order; only nested nn.Sequential has an order we can read."""
    out = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{n}", m) for n, m in _leaves(child)]
        elif isinstance(child, LAYERS) or len(list(child.children())) == 0:
            # a Linear may hold submodules (torchao's FakeQuantizedLinear under QAT)
            out.append((name, child))
        else:
            raise ValueError(f"{name}: {type(child).__name__} is not a chain of layers; "
                             "structured removal needs nested nn.Sequential")
    return out


def chain(model: nn.Module) -> list[tuple[str, nn.Module, list[nn.Module]]]:
    """[(name, layer, modules between it and the next layer)] of a chain model, else ValueError."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"{type(model).__name__} is not an nn.Sequential chain; structured "
                         "removal supports the catalog's mlp, lenet5 and cnn")
    found: list[tuple[str, nn.Module, list[nn.Module]]] = []
    for name, m in _leaves(model):
        if isinstance(m, LAYERS):
            found.append((name, m, []))
        elif not isinstance(m, PASS_THROUGH):
            raise ValueError(f"{name}: {type(m).__name__} between layers cannot be shrunk")
        elif found:
            found[-1][2].append(m)
    return found


def _act_at_zero(between: list[nn.Module]) -> float:
    x = torch.zeros(1)
    for m in between:
        if isinstance(m, tuple(ACTIVATIONS.values())):
            x = m(x)
    return float(x.item())


def kept_units(layer: nn.Module) -> torch.Tensor:
    """Indices of output rows (neurons, filters) with a non-zero weight or bias."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    alive = (w != 0).any(dim=1)
    if layer.bias is not None:
        alive |= layer.bias.detach() != 0
    return torch.nonzero(alive, as_tuple=True)[0]


def _set(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(layer, name, nn.Parameter(value.contiguous(), requires_grad=value.requires_grad))


def _shrink_out(layer: nn.Module, keep: torch.Tensor) -> None:
    _set(layer, "weight", layer.weight.detach()[keep])
    if layer.bias is not None:
        _set(layer, "bias", layer.bias.detach()[keep])
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _columns(prev_width: int, layer: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """Input columns of `layer` fed by the kept units of a layer `prev_width` wide."""
    if isinstance(layer, nn.Linear) and layer.in_features != prev_width:
        per = layer.in_features // prev_width  # a flattened conv map: channel-major blocks
        return (keep[:, None] * per + torch.arange(per, device=keep.device)[None, :]).reshape(-1)
    return keep


@torch.no_grad()
def _shrink_in(layer: nn.Module, prev_width: int, keep: torch.Tensor, constant: float) -> None:
    cols = _columns(prev_width, layer, keep)
    w = layer.weight.detach()
    if constant != 0.0:  # removed units output act(0): fold it into the bias
        if not isinstance(layer, nn.Linear):
            raise ValueError("removed channels output a non-zero constant before a conv layer")
        gone = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        gone[cols] = False
        shift = constant * w[:, gone].sum(dim=1)
        if layer.bias is None:
            layer.bias = nn.Parameter(shift)
        else:
            layer.bias.add_(shift)
    _set(layer, "weight", w[:, cols])
    if isinstance(layer, nn.Linear):
        layer.in_features = len(cols)
    else:
        layer.in_channels = len(cols)


def remove(model: nn.Module, names: list[str] | None = None) -> dict[str, int]:
    """Cut dead output units of every layer but the last (or of `names`) out of `model` in place.

    Returns {layer name: kept output width} for the layers that lost units."""
    layers = chain(model)
    widths: dict[str, int] = {}
    for (name, layer, between), (_, nxt, _) in zip(layers, layers[1:]):
        if names is not None and name not in names:
            continue
        keep = kept_units(layer)
        width = layer.weight.shape[0]
        if len(keep) == width:
            continue
        if len(keep) == 0:  # a layer with no unit left would cut the network: keep one
            keep = torch.zeros(1, dtype=torch.long, device=layer.weight.device)
        _shrink_in(nxt, width, keep, _act_at_zero(between))
        _shrink_out(layer, keep)
        widths[name] = len(keep)
    return widths


def resize(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Give a freshly built chain model the shapes `remove` left (values: load them next)."""
    layers = chain(model)
    for (name, layer, _), (_, nxt, _) in zip(layers, layers[1:]):
        if name in widths:
            width = layer.weight.shape[0]
            keep = torch.arange(widths[name], device=layer.weight.device)
            _shrink_in(nxt, width, keep, 0.0)
            _shrink_out(layer, keep)
    return model


@torch.no_grad()
def flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates x 2 of the Linear/Conv layers for one sample (`example[:1]`)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        per_output = math.prod(m.weight.shape[1:])  # in_features, or in_channels/groups x kernel
        total += 2 * out[0].numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYERS)]
    was = model.training
    model.eval()
    try:
        model(example[:1].float())
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total
