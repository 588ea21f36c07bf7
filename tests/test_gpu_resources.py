"""GPU resources without a GPU: `resources.gpus_per_worker`, what Tune and Ray Train receive
for it (dlopt.runtime.trial), the concurrency the plan computes from CPUs and GPUs
(dlopt.spec.plan.trial_concurrency), the local placement refusals (dlopt.driver.preflight)
and `dlopt plan --gpus`. Ray's objects here are plain config objects; nothing starts.
"""
import json

import pytest
from pydantic import ValidationError

from dlopt import Experiment, Search
from dlopt import cli
from dlopt.driver import preflight
from dlopt.runtime.trial import scaling_config, trial_resources, worker_resources
from dlopt.spec.load import SpecError, error_lines
from dlopt.spec.plan import make_plan, resources_per_trial, trial_concurrency


def make(samples: int = 20, max_concurrent=None, **resources) -> Experiment:
    return Experiment(name="g", epochs=1, resources=resources,
                      search=Search(num_samples=samples, max_concurrent_trials=max_concurrent))


def refusals(**resources) -> list[str]:
    with pytest.raises(ValidationError) as info:
        make(**resources)
    return error_lines(info.value)


# ------------------------------------------------------------------ the field and its checks
def test_worker_gpus_defaults_to_one_gpu_with_use_gpu_and_none_without():
    assert make(use_gpu=True).resources.worker_gpus == 1.0
    assert make().resources.worker_gpus == 0.0
    assert make(use_gpu=True, gpus_per_worker=0.25).resources.worker_gpus == 0.25


@pytest.mark.parametrize("resources, words", [
    (dict(gpus_per_worker=0.5), "only meaningful with resources.use_gpu=True"),
    (dict(use_gpu=True, gpus_per_worker=1.5), "whole GPUs"),
    (dict(use_gpu=True, gpus_per_worker=0.5, num_workers=2), "NCCL"),
    (dict(use_gpu=True, gpus_per_worker=0.0), "greater than 0"),
])
def test_gpus_per_worker_refused_naming_the_field(resources, words):
    lines = refusals(**resources)
    assert len(lines) == 1 and lines[0].startswith("resources.gpus_per_worker"), lines
    assert words in lines[0]


def test_whole_gpus_per_worker_and_fractions_of_one_worker_are_accepted():
    make(use_gpu=True, gpus_per_worker=2, num_workers=2, strategy="ddp")
    make(use_gpu=True, gpus_per_worker=0.25, in_trial=False)  # a 1-worker TorchTrainer


# ------------------------------------------------------------------ what Ray receives
def test_in_trial_fraction_is_the_trials_own_bundle():
    spec = make(use_gpu=True, gpus_per_worker=0.25, cpus_per_worker=2)
    assert trial_resources(spec) == {"CPU": 2, "GPU": 0.25}


def test_torch_trainer_workers_get_gpus_per_worker():
    spec = make(use_gpu=True, gpus_per_worker=2, num_workers=3)
    config = scaling_config(spec)
    assert config.num_workers == 3 and config.use_gpu
    assert config.resources_per_worker == {"CPU": 1.0, "GPU": 2.0}
    assert config.num_gpus_per_worker == 2.0
    assert trial_resources(spec)["CPU"] < 0.01 and "GPU" not in trial_resources(spec)


def test_cpu_trials_reserve_no_gpu():
    spec = make(num_workers=2)
    assert "GPU" not in worker_resources(spec)
    assert scaling_config(spec).num_gpus_per_worker == 0


def test_resources_per_trial_sums_the_workers_gpus():
    assert resources_per_trial(make(use_gpu=True, num_workers=2, gpus_per_worker=2)) == \
        {"CPU": 2.0, "GPU": 4.0}
    assert resources_per_trial(make(use_gpu=True, gpus_per_worker=0.25))["GPU"] == 0.25


# ------------------------------------------------------------------ concurrency (point 6)
def test_gpus_bound_concurrency_not_the_cpus():
    """64 CPUs and 8 GPUs: 20 one-GPU trials run 8 at once (before: 20, from the CPUs)."""
    plan = make_plan(make(use_gpu=True), cluster_cpus=64, cluster_gpus=8)
    assert plan.max_concurrent_trials == 8
    assert "8 trial(s) at once on 64 CPUs, 8 GPUs" in plan.describe()


def test_four_fractional_trials_per_gpu():
    plan = make_plan(make(use_gpu=True, gpus_per_worker=0.25), cluster_cpus=64, cluster_gpus=2)
    assert plan.max_concurrent_trials == 8
    assert "GPU 0.25" in plan.describe()


def test_cpus_still_bound_when_they_are_scarcer():
    plan = make_plan(make(use_gpu=True, gpus_per_worker=0.25), cluster_cpus=3, cluster_gpus=4)
    assert plan.max_concurrent_trials == 2  # 3 CPUs / (1 + the trial driver's sliver)


def test_uncounted_gpus_are_said_and_cpu_plans_ignore_gpus():
    plan = make_plan(make(use_gpu=True), cluster_cpus=64)
    assert plan.max_concurrent_trials == 20 and plan.cluster_gpus is None
    assert any("GPUs were not counted" in n for n in plan.notes)
    cpu = make_plan(make(), cluster_cpus=4, cluster_gpus=8)
    assert cpu.cluster_gpus is None and cpu.max_concurrent_trials == 3


def test_local_gpus_cap_a_wanted_concurrency_but_a_cluster_keeps_it():
    per_trial = {"CPU": 1.0, "GPU": 1.0}
    local, notes = trial_concurrency(per_trial, 20, 10, cpus=2, gpus=2, local=True)
    assert local == 2 and any("this machine has 2" in n for n in notes)
    cluster, notes = trial_concurrency(per_trial, 20, 10, cpus=2, gpus=2, local=False)
    assert cluster == 10 and any("more start as it grows" in n for n in notes)


def test_a_cluster_without_gpu_nodes_yet_is_bounded_by_its_cpus():
    """An autoscaling cluster whose GPU nodes are not up: not 1 trial at a time."""
    concurrency, notes = trial_concurrency({"CPU": 1.0, "GPU": 1.0}, 20, None, cpus=8, gpus=0,
                                           local=False)
    assert concurrency == 7 and any("until GPU nodes join" in n for n in notes)


def test_on_cluster_replaces_the_concurrency_from_the_clusters_resources():
    plan = make_plan(make(use_gpu=True, gpus_per_worker=0.5), cluster_cpus=2)
    assert plan.max_concurrent_trials == 1
    on = plan.on_cluster(cpus=32, gpus=3)
    assert on.max_concurrent_trials == 6 and on.cluster_gpus == 3 and on.cluster_cpus == 32
    assert plan.max_concurrent_trials == 1  # the frozen original is untouched


def test_dlopt_plan_takes_gpus(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"name": "g", "epochs": 1, "search": {"num_samples": 12},
                                "resources": {"use_gpu": True, "gpus_per_worker": 0.25}}))
    assert cli.main(["plan", str(path), "--cpus", "64", "--gpus", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["resources_per_trial"] == {"CPU": 1.0, "GPU": 0.25}
    assert shown["max_concurrent_trials"] == 8 and shown["cluster_gpus"] == 2


# ------------------------------------------------------------------ local placement refusals
@pytest.mark.parametrize("resources, gpus, field", [
    (dict(use_gpu=True), 0, "resources.use_gpu"),
    (dict(use_gpu=True, gpus_per_worker=4), 2, "resources.gpus_per_worker"),
    (dict(use_gpu=True, num_workers=3, gpus_per_worker=1), 2, "resources.num_workers"),
    (dict(use_gpu=True, num_workers=2, gpus_per_worker=2), 2, "resources.num_workers"),
])
def test_trial_that_a_local_machine_cannot_place_is_refused(resources, gpus, field):
    problems = preflight.placement_problems(make(**resources), {"CPU": 64, "GPU": gpus},
                                            "this machine")
    assert len(problems) == 1 and problems[0].startswith(field), problems


@pytest.mark.parametrize("resources, gpus", [
    (dict(use_gpu=True, gpus_per_worker=0.25), 1),
    (dict(use_gpu=True, num_workers=2, gpus_per_worker=2), 4),
    (dict(), 0),
])
def test_trial_that_fits_is_not_refused(resources, gpus):
    assert preflight.placement_problems(make(**resources), {"CPU": 64, "GPU": gpus}, "here") == []


def test_local_run_without_a_gpu_is_refused_before_ray(tmp_path):
    """This machine has no GPU: `dlopt run` refuses a GPU spec naming the field."""
    if preflight.local_capacity()["GPU"] > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(SpecError) as info:
        preflight.check(make(use_gpu=True, gpus_per_worker=0.25), f"sqlite:///{tmp_path}/m.db",
                        None)
    assert info.value.lines[0].startswith("resources.use_gpu")


# ------------------------------------------------------------------ Ray's memory resource
def test_memory_per_worker_becomes_rays_memory_resource_in_bytes():
    spec = make(num_workers=2, memory_per_worker_gb=2)
    assert worker_resources(spec) == {"CPU": 1.0, "memory": float(2 * 2**30)}
    assert scaling_config(spec).resources_per_worker["memory"] == 2 * 2**30
    assert trial_resources(make(memory_per_worker_gb=0.5))["memory"] == 2**29  # in-trial
    assert "memory" not in worker_resources(make(num_workers=2))  # unset: nothing reserved


def test_memory_per_worker_must_be_positive_naming_the_field():
    lines = refusals(memory_per_worker_gb=0)
    assert len(lines) == 1 and lines[0].startswith("resources.memory_per_worker_gb"), lines
