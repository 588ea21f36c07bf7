"""dlopt: experiment orchestration for deep-learning optimization on Ray and MLflow.

Importing dlopt is cheap (spec only); `run` and `load_model` load Ray/torch/MLflow lazily.
"""
from dlopt import tune
from dlopt.spec import (
    Augment,
    Data,
    Distill,
    Experiment,
    Model,
    Optimizer,
    Prune,
    Quantize,
    Regularization,
    Resources,
    Schedule,
    Search,
    Share,
    Tracking,
)

__all__ = ["Experiment", "Data", "Model", "Optimizer", "Schedule", "Regularization", "Augment",
           "Prune",
           "Quantize", "Share", "Distill", "Search", "Resources", "Tracking", "tune", "run", "load_model"]


def run(experiment: Experiment, **kwargs):
    """Run a sweep; keyword arguments as `dlopt.driver.sweep.run` (address, tracking_uri,
    storage, resume, progress...). Returns a `dlopt.driver.sweep.SweepResult`: dlopt's trial
    summaries, the best trial and registered models, and Ray's `ResultGrid` as `result_grid`.

    Diagnostics go to `logging.getLogger("dlopt")`; the caller's warnings filters and
    environment are left as they were. Failures raise (e.g. `dlopt.spec.load.SpecError`).
    """
    # deferred on purpose: `import dlopt` stays cheap; the driver loads Ray, MLflow and torch
    from dlopt.driver.sweep import run as _run

    return _run(experiment, **kwargs)


def load_model(uri: str):
    """`models:/NAME@ALIAS` -> a ready torch.nn.Module (weights from safetensors, no pickle)."""
    # deferred on purpose: loads torch and MLflow
    from dlopt.registry.register import load_model as _load

    return _load(uri)
