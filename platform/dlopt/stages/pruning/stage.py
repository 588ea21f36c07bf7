"""Magnitude pruning with torch.nn.utils.prune: layer or global, unstructured or by rows.

How it stays correct under training, DDP and restarts:
- At setup every target weight gets torch's pruning reparametrization (`prune.identity`):
  the Parameter becomes `weight_orig` (the same object the optimizer and DDP hold) and a
  `weight_mask` buffer is multiplied in by a forward pre-hook. The structure exists before
  DDP wraps the model and before a checkpoint is loaded, so masks resume with the model.
- Mask updates compute the new mask with torch's own `L1Unstructured` / `LnStructured`
  `compute_mask` (over all targets concatenated for global scope, as
  `prune.global_unstructured` does) and copy it *in place* into `weight_mask`: hooks,
  buffers and optimizer references never change. Importance is `weight_orig * mask`, so a
  pruned weight (importance 0) is always among the smallest and masks only grow.
- After each optimizer step `weight_orig` is multiplied by the mask, so momentum or weight
  decay cannot revive a pruned weight, even in the stored parameter.
- Every DDP rank holds the same weights after the gradient all-reduce and runs the same
  deterministic mask computation; `masks_agree` checks that across ranks.
- Under FSDP (weights are DTensor shards) torch's reparametrization cannot be installed;
  the masks are DTensor shards placed like the weights instead (dlopt.stages.pruning.sharded),
  computed by the same `masks_from` on the gathered weights.

Schedules: "one_shot" prunes to the target at `start_epoch` (then training fine-tunes);
Structured pruning removes: the bias of a pruned row is held at zero with its weights, and
at fit_end the pruned rows, their biases and the next layer's input columns are cut out
(dlopt.ml.shrink), so the saved model is a smaller dense network; meta.json records the
widths left (`widths`) and loading rebuilds those shapes. Graph models (resnet, a user's
fx-traceable net: not an nn.Sequential chain) train with masks per dependency group instead
(dlopt.stages.pruning.groups), and the cut removes exactly the channels they masked.

allocation="sensitivity": when the first mask update is due, rank 0 measures each layer's
sensitivity on the validation split and chooses one final sparsity per layer meeting the
global budget (dlopt.stages.pruning.allocation); the choice is broadcast to every rank
(dlopt.ml.collectives) and kept in the stage's state across restarts. Each layer then follows
the schedule scaled to its own final sparsity (per-layer AGP); fit_end reports
`prune_sparsity.<layer>` and `prune_kept.<layer>` (the compression report's `layers` table).

"gradual" follows Zhu & Gupta (2017), s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3,
updating masks every `frequency` steps between `start_epoch` and `end_epoch`.
"""
from __future__ import annotations

from torch import nn

from dlopt.ml import collectives, residual, shrink
from dlopt.stages import CompressionStage, State, StageOutput
from dlopt.stages.pruning import allocation
from dlopt.stages.pruning import sharded as prune_sharded
from dlopt.stages.pruning.groups import GroupMasks
from dlopt.stages.pruning.masks import (
    apply_masks,
    attach,
    compute_masks,
    gradual_sparsity,
    make_permanent,
    masks_agree,
    targets,
    update_due,
    zero_dead_biases,
    zero_pruned,
)


class Prune(CompressionStage):
    name = "prune"

    def __init__(self, spec, experiment):
        self.spec = spec
        self.epochs = experiment.epochs
        self.sparsity = 0.0  # target reached so far
        self.rank_mismatches = 0
        self.updates = 0
        self.forced_at_end = 0
        self.sharded = None  # ShardedMasks when the model is FSDP-sharded (pruning.sharded)
        self.widths: dict[str, int] = {}  # structured: output widths left after removal
        self.shapes: dict[str, list] = {}  # structured, graph models: pruned tensor shapes
        self.layer_sparsity: list[float] | None = None  # allocation="sensitivity": chosen
        self.groups: GroupMasks | None = None  # structured, graph models: per dependency group

    def _window(self, steps_per_epoch: int) -> tuple[int, int]:
        s = self.spec
        start = s.start_epoch * steps_per_epoch
        if s.schedule == "one_shot":
            return start, start
        end_epoch = s.end_epoch if s.end_epoch is not None else self.epochs
        return start, end_epoch * steps_per_epoch

    def _mods(self, state: State) -> list[nn.Module]:
        return [m for _, m in targets(state.model, self.spec.structured)]

    def target(self, step: int, steps_per_epoch: int) -> float | None:
        """Sparsity to reach at `step`, or None when masks do not change there."""
        start, end = self._window(steps_per_epoch)
        if self.spec.schedule == "one_shot":
            return self.spec.sparsity if step == start else None
        if not update_due(step, start, end, self.spec.frequency):
            return None
        return gradual_sparsity(step, self.spec.sparsity, start, end)

    def _update(self, state: State, sparsity: float, world: int | None = None) -> None:
        if sparsity <= self.sparsity:
            return
        mods = self._mods(state)
        world = state.world if world is None else world
        if self.groups is not None:
            agree = self.groups.update(state, sparsity, world)
        elif self.spec.allocation == "sensitivity":
            if self.layer_sparsity is None:
                self.layer_sparsity = self._choose(state, mods, world)
            scale = sparsity / self.spec.sparsity
            apply_masks(mods, allocation.layer_masks(mods, [s * scale
                                                            for s in self.layer_sparsity]))
            agree = masks_agree(mods, world)
        elif self.sharded is not None:
            self._rebuild_after_restart(mods)
            agree = self.sharded.compute(mods, sparsity, self.spec.scope, self.spec.structured,
                                         self.spec.norm, world)
        else:
            apply_masks(mods, compute_masks(mods, sparsity, self.spec.scope,
                                            self.spec.structured, self.spec.norm))
            if self.spec.structured:
                zero_dead_biases(mods)
            agree = masks_agree(mods, world)
        self.sparsity = sparsity
        self.updates += 1
        if not agree:
            self.rank_mismatches += 1

    def _choose(self, state: State, mods: list[nn.Module], world: int) -> list[float]:
        """Per-layer final sparsities: measured on rank 0 (validation split), broadcast."""
        chosen = None
        if state.rank == 0:
            bare = getattr(state.model, "module", state.model)  # DDP's module: no collectives

            def score() -> float:
                m = state.evaluate(bare)
                return m["val_accuracy"] if "val_accuracy" in m else -m["val_loss"]
            table = allocation.sensitivity(mods, allocation.levels_for(self.spec.sparsity), score)
            chosen = allocation.allocate([m.weight_orig.numel() for m in mods], table,
                                         self.spec.sparsity)
        if world > 1:
            chosen = collectives.broadcast_object(chosen, 0, state.device)
        return chosen

    def _layer_entries(self, model: nn.Module) -> dict:
        """Per-layer table for the final report: chosen sparsity and weights kept."""
        out = {}
        for (name, m), s in zip(targets(model, False), self.layer_sparsity or []):
            out[f"prune_sparsity.{name}"] = s
            out[f"prune_kept.{name}"] = int(m.weight_mask.sum().item())
            out[f"prune_params.{name}"] = m.weight_mask.numel()
        return out

    def _rebuild_after_restart(self, mods: list[nn.Module]) -> None:
        if self.sharded.masks is None and self.sparsity > 0:
            self.sharded.rebuild(mods)

    def _remove(self, state: State) -> None:
        """Cut the pruned units out. Chain models: what the masks pruned (rows, biases, the next
        layer's columns; dlopt.ml.shrink, which also folds act(0) into the next bias). Graph
        models (resnet, a user's fx-traceable net): the channels the dependency-group masks held
        at zero, every member of each group (dlopt.stages.pruning.groups, dlopt.ml.residual),
        so the cut model computes what the masked one did."""
        if self.groups is not None:
            self.shapes = self.groups.cut(state)
            return
        names = [name for name, _ in targets(state.model, True)]
        zero_dead_biases([m for _, m in targets(state.model, True)])
        self.widths = shrink.remove(state.model, names)

    # --- events
    def setup(self, state: State) -> None:
        graph = self.spec.structured and not _is_chain(state.model)
        if prune_sharded.is_sharded(state.model):
            if graph:
                raise ValueError("structured pruning of a graph model (resnet, a custom arch that "
                                 "is not an nn.Sequential chain) is not implemented on FSDP "
                                 "shards; use strategy 'ddp'")
            self.sharded = prune_sharded.ShardedMasks()
            self.sharded.mask_grads(self._mods(state))
        elif graph:
            residual.check_traceable(state.model)  # fx's reason, before any epoch is spent
            self.groups = self.groups or GroupMasks()
        else:
            attach(state.model, self.spec.structured)
        if self._window(state.steps_per_epoch)[0] == 0:
            target = self.target(0, state.steps_per_epoch)
            if target is not None:
                self._update(state, target)

    def after_backward(self, state: State) -> None:
        # FSDP after a restart: masks rebuilt from the loaded weights before the first
        # optimizer step. Rebuilt after it (in after_step) they kept the pruned weights that
        # Adam's restored moments had just moved off zero (test_fsdp: resumed after the
        # pruning window, sparsity and losses no longer matched DDP's).
        if self.sharded is not None:
            self._rebuild_after_restart(self._mods(state))

    def after_step(self, state: State) -> None:
        if self.groups is not None:
            self.groups.apply(state.model)
            target = self.target(state.step, state.steps_per_epoch)
            if target is not None:
                self._update(state, target)
            return
        mods = self._mods(state)
        if self.sharded is not None:
            self._rebuild_after_restart(mods)
            self.sharded.zero_pruned(mods)
        else:
            zero_pruned(mods)
            if self.spec.structured:
                zero_dead_biases(mods)
        target = self.target(state.step, state.steps_per_epoch)
        if target is not None:
            self._update(state, target)

    def fit_end(self, state: State) -> None:
        # fit_end runs on rank 0 alone (dlopt.train.strategies: final_model), so no collectives
        world = 1
        if self.sharded is not None:
            # FSDP: the loop gathered the full weights (pruned ones are exact zeros) into a
            # plain model on rank 0; finish there like DDP.
            # Freshly attached all-ones masks keep the zeros: they are the least important.
            self.sharded = None
            attach(state.model, self.spec.structured)
        if self.sparsity < self.spec.sparsity:  # stopped early: reach the target anyway
            self._update(state, self.spec.sparsity, world)
            self.forced_at_end = 1
        layers = self._layer_entries(state.model)
        make_permanent(state.model)
        if self.spec.structured:
            self._remove(state)
        state.add_compression_metrics({"prune_rank_mask_mismatches": self.rank_mismatches,
                                       "prune_mask_updates": self.updates,
                                       "prune_forced_at_end": self.forced_at_end, **layers})

    def output(self) -> StageOutput:
        return StageOutput(widths=self.widths, shapes=self.shapes)

    def state_dict(self) -> dict:
        return {"sparsity": self.sparsity, "rank_mismatches": self.rank_mismatches,
                "updates": self.updates, "layer_sparsity": self.layer_sparsity,
                "groups": self.groups.state_dict() if self.groups is not None else None}

    def load_state_dict(self, data: dict) -> None:
        self.sparsity = data.get("sparsity", 0.0)
        self.rank_mismatches = data.get("rank_mismatches", 0)
        self.updates = data.get("updates", 0)
        self.layer_sparsity = data.get("layer_sparsity")
        if data.get("groups") is not None:  # the plan every rank masks with (checkpointed)
            self.groups = self.groups or GroupMasks()
            self.groups.load_state_dict(data["groups"])


def _is_chain(model: nn.Module) -> bool:
    """An nn.Sequential chain dlopt.ml.shrink can cut (mlp, lenet5, cnn), not a graph model."""
    try:
        shrink.chain(model)
    except ValueError:
        return False
    return True
