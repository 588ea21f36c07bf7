"""Ray Train entry point: adapts the plain loop to a Ray Train worker.

Only JSON crosses the process boundary (DESIGN rule 2): the worker re-validates the spec.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from dlopt.spec import Experiment
    from dlopt.train.loop import CHECKPOINT_FILE, fit, load_checkpoint

    spec = Experiment.model_validate(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / CHECKPOINT_FILE).exists():
                resume = load_checkpoint(Path(d))

    # Platform overhead made visible: each report carries how long the previous
    # `ray.train.report` call blocked (checkpoint write + upload + controller poll).
    blocked: list[float] = []

    def report(metrics: dict, write=None) -> None:
        if blocked:
            metrics = {**metrics, "report_seconds": blocked[-1]}
        t0 = time.perf_counter()
        if write is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as d:
                write(Path(d))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        blocked.append(time.perf_counter() - t0)

    device = "cuda" if spec.resources.use_gpu else "cpu"
    wrap = ray.train.torch.prepare_model if world > 1 else (lambda m: m)
    if device == "cuda":
        device = str(ray.train.torch.get_device())
    fit(spec, report, rank=rank, world=world, resume=resume, wrap=wrap, device=device)
