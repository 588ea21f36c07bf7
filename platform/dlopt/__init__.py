"""dlopt: experiment orchestration for deep-learning optimization on Ray and MLflow.

Importing dlopt is cheap (spec only); `run` and `load_model` load Ray/torch/MLflow lazily.
"""
from dlopt import tune
from dlopt.spec import (Data, Distill, Experiment, Model, Optimizer, Prune, Quantize,
                        Regularization, Resources, Schedule, Search, Tracking)

__all__ = ["Experiment", "Data", "Model", "Optimizer", "Schedule", "Regularization", "Prune",
           "Quantize", "Distill", "Search", "Resources", "Tracking", "tune", "run", "load_model"]


def run(experiment: Experiment, **kwargs):
    """Run a sweep; keyword arguments as `dlopt.sweep.run` (address, tracking_uri, storage...)."""
    from dlopt.driver.sweep import run as _run

    return _run(experiment, **kwargs)


def load_model(uri: str):
    """`models:/NAME@ALIAS` -> a ready torch.nn.Module (weights from safetensors, no pickle)."""
    from dlopt.registry.register import load_model as _load

    return _load(uri)
