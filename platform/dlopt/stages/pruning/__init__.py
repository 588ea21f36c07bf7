"""Magnitude pruning, in one package (docs/architecture.md, "The training loop and its events").

- `masks`: the math, pure functions on torch.nn.utils.prune (schedules, masks, agreement);
- `stage`: the `Prune` stage that applies them in the loop (DDP and one process);
- `sharded`: the same masks as DTensor shards when the model is FSDP-sharded.
Structured removal at fit_end (cutting pruned rows out of the saved model) is
dlopt.ml.shrink: loading a saved artifact (dlopt.artifact.files) rebuilds the shrunk shapes
with it too, and artifact sits below stages in the layers, so it cannot live here.
"""
from dlopt.stages.pruning.masks import PRUNABLE
from dlopt.stages.pruning.stage import Prune

__all__ = ["PRUNABLE", "Prune"]
