"""Layer 1, the spec: what a user writes, validated and planned without Ray, torch or MLflow.

See docs/architecture.md ("Layers"). Modules: `tune` (search domains), `fields` (field types
and catalog names), `sections` (one model per part of an experiment), `augmentation`
(Regularization.augment and its checks), `checks` (cross-field problems), `experiment`
(Experiment, resolve), `paths` (dotted paths), `load` (files -> spec, errors per field),
`plan` (what a sweep will do), `report` (the trial report protocol).
"""
from dlopt.spec import tune
from dlopt.spec.augmentation import Augment
from dlopt.spec.experiment import Experiment, resolve
from dlopt.spec.fields import (
                               ACTIVATIONS,
                               ALGORITHMS,
                               ARCHS,
                               DATASETS,
                               INITS,
                               LOCAL_DATASETS,
                               OPTIMIZERS,
                               SCHEDULERS,
                               SCHEDULES,
)
from dlopt.spec.metric_names import FINAL_METRICS, VAL_METRICS
from dlopt.spec.paths import domains, flatten, set_path
from dlopt.spec.sections import (
                               Data,
                               Distill,
                               Model,
                               Optimizer,
                               Prune,
                               Quantize,
                               Regularization,
                               Resources,
                               Schedule,
                               Search,
                               Share,
                               Source,
                               StageSpec,
                               Tracking,
)

__all__ = ["tune", "Augment", "Experiment", "resolve", "Data", "Distill", "Model", "Optimizer", "Prune",
           "Quantize", "Regularization", "Resources", "Schedule", "Search", "Share", "Source",
           "StageSpec", "Tracking",
           "domains", "flatten", "set_path", "FINAL_METRICS", "VAL_METRICS", "ACTIVATIONS",
           "ALGORITHMS", "ARCHS", "DATASETS", "INITS", "LOCAL_DATASETS", "OPTIMIZERS", "SCHEDULERS",
           "SCHEDULES"]
