"""The GPU acceptance script (benchmarks/gpu.py) without a GPU: every spec it would run is
valid, plans the GPUs it is meant to use, fits the machine it targets; `--dry-run` says so
with exit 0; without CUDA the real run stops with a message (exit 1). Its measuring helpers
(peak concurrency from Tune's timestamps, the fp16 scaler verdict) are checked on made-up input.
"""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlopt.driver.preflight import placement_problems
from dlopt.spec.plan import make_plan

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_every_spec_validates_plans_and_fits(gpu, gpus):
    cases, skipped = gpu.specs(gpus)
    for name, spec in cases.items():
        plan = make_plan(spec, cluster_cpus=16, cluster_gpus=gpus)
        assert spec.resources.use_gpu, name
        assert placement_problems(spec, {"CPU": 16, "GPU": gpus}, "a 16-CPU machine") == [], name
        assert plan.resources_per_trial["GPU"] <= gpus
    fractional = make_plan(cases["fractional-4-per-gpu"], cluster_cpus=16, cluster_gpus=gpus)
    assert fractional.max_concurrent_trials == fractional.trials == 4 * gpus
    assert {cases[c].precision for c in cases} == {"32", "bf16-mixed", "16-mixed"}
    stages = [s.stage for s in cases["compress-1gpu"].compression]
    assert set(stages) == {"prune", "quantize", "distill"}
    images = cases["images-1gpu-rank-loader"]
    assert images.data.source.format == "images" and images.regularization.augment.flip
    if gpus > 1:
        assert cases[f"images-{gpus}gpu-rank-loader"].resources.num_workers == gpus
    if gpus == 1:
        assert set(skipped) == {"ddp-Ngpu", "fsdp-Ngpu", "pipeline-Ngpu"}
    else:
        assert not skipped
        for strategy in ("ddp", "fsdp", "pipeline"):
            assert cases[f"{strategy}-{gpus}gpu"].resources.num_workers == gpus


def test_dry_run_exits_0_and_shows_each_case(gpu, capsys):
    assert gpu.main(["--dry-run", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    for case in ("ddp-2gpu", "fsdp-2gpu", "pipeline-2gpu", "fractional-4-per-gpu", "compress-1gpu",
                 "ddp-1gpu-fp16-restart", "images-1gpu-rank-loader", "images-2gpu-rank-loader"):
        assert case in out


def test_without_cuda_it_says_so(gpu, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu.main([]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_peak_running_counts_overlapping_trials(gpu):
    grid = [SimpleNamespace(metrics={"timestamp": end, "time_total_s": end - start})
            for start, end in [(0, 10), (1, 9), (2, 8), (9.5, 12)]]
    assert gpu.peak_running(grid) == 3


def test_scaler_verdicts(gpu, tmp_path):
    from dlopt.train.checkpoint import TrialCheckpoint, save

    def ckpt(epoch, scale, tracker):
        d = tmp_path / f"c{epoch}"
        d.mkdir(exist_ok=True)
        save(TrialCheckpoint(epoch=epoch, step=0, scheduler={}, model={}, optimizer={},
                             scaler={"scale": scale, "_growth_tracker": tracker}), d)

    assert gpu.scaler_survived(tmp_path, steps_per_epoch=100)["verdict"].startswith("fail")
    ckpt(3, 32768.0, 300)  # restored at 200 after epoch 2, then 100 more steps
    assert gpu.scaler_survived(tmp_path, steps_per_epoch=100)["verdict"] == "pass"
    ckpt(3, 65536.0, 100)  # a fresh scaler: defaults, counting from 0
    assert gpu.scaler_survived(tmp_path, steps_per_epoch=100)["verdict"].startswith("fail")
