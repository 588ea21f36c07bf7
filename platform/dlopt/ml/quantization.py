"""Int8 quantization primitives for Linear layers with torchao (`quantize_`), not the deprecated torch.ao.

Methods:
- "dynamic": post-training; int8 per-row weights, activations quantized per token at run
  time (`Int8DynamicActivationInt8WeightConfig`);
- "static": post-training; activation scales fixed from `calibration_batches` training
  batches observed with torchao's min/max observer (`Int8StaticActivationInt8WeightConfig`,
  per-tensor activation scale per layer);
- "qat": quantization-aware training. torchao's `QATConfig` swaps Linear for
  `FakeQuantizedLinear` at setup (before DDP wraps the model) with fake quantization off;
  it is switched on for the last `qat_epochs`; at the end the fake-quant modules convert
  back and the dynamic int8 config is applied. torchao's per-token fake quantizer is
  asymmetric only, so the converted model uses asymmetric per-token activations too and
  inference matches what training saw.

All of these run on CPU (torchao 0.18 `Int8Tensor`), so no method needs a GPU. A pruned
weight stays zero: symmetric weight quantization maps 0 to 0.

`apply(model, quantization, act_scales)` is also how a saved artifact is rebuilt, so the
trained and the loaded model go through the same code.
"""
from __future__ import annotations

import torch
from torch import nn


def _ao():
    import torchao.quantization as q

    return q


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def dynamic_config(asymmetric: bool = False):
    q = _ao()
    mapping = q.MappingType.ASYMMETRIC if asymmetric else q.MappingType.SYMMETRIC
    return q.Int8DynamicActivationInt8WeightConfig(act_mapping_type=mapping,
                                                   set_inductor_config=False)


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-Linear symmetric per-tensor activation scale from observed inputs."""
    q = _ao()
    observers, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            obs = q.AffineQuantizedMinMaxObserver(
                q.MappingType.SYMMETRIC, torch.int8, granularity=q.PerTensor(),
                eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32,
                zero_point_dtype=torch.int32)
            observers[name] = obs
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, o=obs: [o(inp[0]), None][1]))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: obs.calculate_qparams()[0].reshape(1, 1).float() for name, obs in observers.items()}


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear)


def apply(model: nn.Module, quantization: dict,
          act_scales: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Quantize every Linear in place as `quantization` ({"method": ...}) says."""
    q = _ao()
    if quantization["method"] == "dynamic":
        q.quantize_(model, dynamic_config(quantization.get("act_mapping") == "asymmetric"),
                    filter_fn=_is_linear)
    elif quantization["method"] == "static":
        for name in linear_names(model):
            cfg = q.Int8StaticActivationInt8WeightConfig(
                act_quant_scale=act_scales[name], granularity=[q.PerTensor(), q.PerRow()],
                set_inductor_config=False)
            q.quantize_(model, cfg, filter_fn=lambda m, fqn, n=name: fqn == n)
    else:
        raise ValueError(f"unknown quantization method {quantization['method']!r}")
    return model


# ------------------------------------------------------------------ QAT
def qat_prepare(model: nn.Module) -> None:
    """Swap Linear -> FakeQuantizedLinear (same Parameter objects), fake quant off.

    A module already under torch's pruning reparametrization has no `weight` Parameter
    for torchao to reuse, so its mask is lifted for the swap and put back on the new module
    (`prune.custom_from_mask`): the Parameter object, hence the optimizer state, is kept."""
    from torch.nn.utils import prune

    q = _ao()
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and hasattr(m, "weight_mask"):
            masks[name] = m.weight_mask.detach().clone()
            prune.remove(m, "weight")
    q.quantize_(model, QATConfig(
        activation_config=IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
        weight_config=IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True),
        step="prepare"))
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        prune.custom_from_mask(modules[name], "weight", mask)
    set_fake_quant(model, False)


def is_qat_prepared(model: nn.Module) -> bool:
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return any(isinstance(m, FakeQuantizedLinear) for m in model.modules())


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    from torchao.quantization.qat.linear import enable_linear_fake_quant

    model.apply(lambda m: enable_linear_fake_quant(m, enabled))


def qat_convert(model: nn.Module) -> None:
    from torchao.quantization.qat import QATConfig

    _ao().quantize_(model, QATConfig(step="convert"))




# ------------------------------------------------------------------ the stage
