"""Fractional GPUs as Ray places them, without a GPU: Ray only counts GPUs, so a local Ray
started with `num_gpus=2` offers two logical GPUs. The plan's concurrency comes from that
cluster's resources (dlopt.driver.sweep.cluster_plan, as with --address), and Tune places
trials with the bundle dlopt gives them (dlopt.runtime.trial.trial_resources): four
`gpus_per_worker=0.25` trials share each GPU, all eight run at once, each sees one GPU.
The trial body is a probe, not dlopt's loop: that would open CUDA, which this machine lacks
(the GPU acceptance script, benchmarks/gpu.py, runs the loop itself on a real GPU).
"""
import os
import time
from pathlib import Path

import pytest
import ray
from ray import tune

from dlopt import Experiment, Search
from dlopt.driver.sweep import cluster_plan
from dlopt.runtime.trial import trial_resources
from dlopt.spec.plan import make_plan

TRIALS = 8


@pytest.fixture
def fake_gpu_cluster():
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_four_fractional_trials_share_each_gpu(fake_gpu_cluster, tmp_path):
    spec = Experiment(name="frac", epochs=1, search=Search(num_samples=TRIALS),
                      resources={"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 0.5})
    plan = cluster_plan(make_plan(spec, cluster_cpus=1))  # the driver's CPUs do not count
    assert plan.max_concurrent_trials == TRIALS and plan.cluster_gpus == 2
    started = tmp_path / "started"
    started.mkdir()

    def probe(config):
        (Path(started) / tune.get_context().get_trial_id()).touch()
        deadline = time.monotonic() + 120
        while len(list(Path(started).iterdir())) < TRIALS and time.monotonic() < deadline:
            time.sleep(0.2)  # every trial waits here until all have started: concurrent
        tune.report({"together": len(list(Path(started).iterdir())),
                     "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                     "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "")})

    trainable = tune.with_resources(
        probe, lambda config: tune.PlacementGroupFactory([trial_resources(plan.trial_spec(config))]))
    grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        num_samples=TRIALS, max_concurrent_trials=plan.max_concurrent_trials),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="frac")).fit()
    results = [r.metrics for r in grid]
    assert not grid.errors and len(results) == TRIALS
    assert all(r["together"] == TRIALS for r in results), results
    visible = [r["visible"] for r in results]
    assert all(v in ("0", "1") for v in visible), visible  # one GPU each
    assert sorted(visible.count(g) for g in ("0", "1")) == [4, 4]
