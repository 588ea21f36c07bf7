"""Pruning masks for FSDP-sharded weights: DTensor masks placed exactly like their weights.

Why not torch's pruning reparametrization (what dlopt.stages.pruning.stage uses for DDP): on an
FSDP2 module `prune.identity` fails at the next forward (measured, torch 2.13:
"TypeError: cannot assign 'torch.FloatTensor' as parameter 'weight' (torch.nn.Parameter or
None expected)"): FSDP2 re-registers the unsharded weight as the module's Parameter around
each forward, and the pruning pre-hook assigns a plain tensor to that same name.

What happens instead (the Prune stage calls these when the model is sharded):
- `compute`: at a mask update every rank gathers the full weights (`full_tensor()`, one
  all-gather per pruned layer, only at update steps) and runs the same torch `compute_mask`
  code as DDP (`masks.masks_from`), so global scope sees every weight; all ranks get the same
  full masks, and each keeps only its own shard of them (`distribute_tensor` with
  `src_data_rank=None`: no communication, each rank slices what it owns). A mask shard has
  the placement of its weight shard, so 1/N of the mask memory is held per rank.
- `zero_pruned`: after every optimizer step each weight shard is multiplied by its mask
  shard (a local op), so pruned weights are exact zeros in every forward, in every sharded
  checkpoint and in the gathered full state dict from which the artifact is built: the
  exported model carries the sparsity with nothing else to carry.
- Masks are not checkpointed: after a restart they are rebuilt as `weight != 0` from the
  restored shards (pruned weights are exact zeros; a trained fp32 weight landing on exactly
  0 otherwise is vanishingly rare, and would only be counted as pruned early).

- `mask_grads`: under the reparametrization a pruned weight's gradient is zero; here the
  weight is zero but its gradient is not, and a GradClip stage (it runs before pruning)
  would count it in its norm (measured: 1.8e-4 relative loss drift from DDP after one epoch
  with grad_clip_norm). So a forward pre-hook, which runs after FSDP's own (FSDP prepends
  its hook), finds the pruned entries as the exact zeros of the just-gathered full weight
  and puts a one-shot gradient hook on it that zeroes them before FSDP reduce-scatters the
  gradient. No mask is gathered, and the updates equal DDP's.
"""
from __future__ import annotations

import torch
from torch import nn

from dlopt.stages.pruning import masks


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full(t) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _like(full: torch.Tensor, weight):
    """This rank's shard of `full`, placed like `weight` (every rank holds the same `full`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(weight, DTensor):
        return full
    return distribute_tensor(full, weight.device_mesh, weight.placements, src_data_rank=None)


class ShardedMasks:
    """The masks of the pruned layers as DTensor shards (None until the first update)."""

    def __init__(self):
        self.masks: list | None = None

    @torch.no_grad()
    def rebuild(self, mods: list[nn.Module]) -> None:
        self.masks = [(m.weight != 0).to(m.weight.dtype) for m in mods]

    @torch.no_grad()
    def compute(self, mods: list[nn.Module], sparsity: float, scope: str, structured: bool,
                norm: str, world: int) -> bool:
        """New masks reaching `sparsity`; applied at once. True when all ranks agree on the
        full masks (they must: the same gathered weights, the same deterministic code)."""
        full_w = [_full(m.weight.detach()) for m in mods]
        current = ([_full(k) for k in self.masks] if self.masks is not None
                   else [torch.ones_like(w) for w in full_w])
        importance = [w * c for w, c in zip(full_w, current)]
        full_masks = masks.masks_from(importance, current, sparsity, scope, structured, norm)
        agree = masks.tensors_agree(full_masks, world)
        self.masks = [_like(k, m.weight) for k, m in zip(full_masks, mods)]
        self.zero_pruned(mods)
        return agree

    def mask_grads(self, mods: list[nn.Module]) -> None:
        """Install the gradient-masking forward pre-hooks once (see the module docstring)."""
        if not getattr(self, "_hooks", None):
            self._hooks = [m.register_forward_pre_hook(_zero_pruned_grad) for m in mods]

    @torch.no_grad()
    def zero_pruned(self, mods: list[nn.Module]) -> None:
        if self.masks is None:
            return
        for m, mask in zip(mods, self.masks):
            m.weight.mul_(mask)


def _zero_pruned_grad(module: nn.Module, args) -> None:
    w = module.weight  # the unsharded full weight: FSDP's pre-forward hook ran first
    if not (torch.is_grad_enabled() and w.requires_grad):
        return
    pruned = w.detach() == 0
    handle = None

    def mask(grad):
        handle.remove()  # one backward per forward; no hooks pile up on the reused tensor
        return grad.masked_fill(pruned, 0)

    handle = w.register_hook(mask)
