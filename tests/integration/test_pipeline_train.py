"""Pipeline model parallelism through Ray Train for real: 2 CPU workers (gloo), digits, real
MLflow on SQLite. The mlp is split into two stages, one per worker; its losses equal one
process training the whole model (same seed and batches), and the quantized model registers
and reloads like any other."""
from __future__ import annotations

from pathlib import Path

import pytest
from dlopt_testing import raw_digits_val
import yaml
from mlflow.tracking import MlflowClient

SPEC = {
    "name": "pipe-digits", "seed": 1, "epochs": 2,
    "data": {"dataset": "digits", "batch_size": 64, "test_fraction": 0.0},
    "model": {"arch": "mlp", "hidden": [64, 32]},
    "optimizer": {"name": "adam", "lr": 0.003},
    "compression": [{"stage": "quantize", "method": "dynamic"}],
    "resources": {"num_workers": 2, "strategy": "pipeline"},
    "tracking": {"experiment": "pipeline", "register_as": "pipe-digits", "report_every": 1},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from dlopt.spec.load import load
    from dlopt.driver.sweep import run

    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "pipe.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    result = run(load(path), tracking_uri=uri, storage=str(tmp / "ray_results"), progress=False)
    client = MlflowClient(uri)
    [child] = client.search_runs([result.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return {"tmp": tmp, "uri": uri, "client": client, "run": child, "result": result}


def single_process_losses() -> list[dict]:
    """The same spec through the plain loop in this process: the whole model, all batches."""
    from dlopt.spec import Experiment
    from dlopt.train.loop import fit

    spec = Experiment.model_validate({**SPEC, "resources": {"num_workers": 1},
                                      "compression": []})
    reports = []
    fit(spec, lambda m, w: reports.append(m), rank=0, world=1)
    return [m for m in reports if not m.get("final")]


def test_pipeline_losses_equal_one_process(sweep):
    client, run = sweep["client"], sweep["run"]
    assert run.info.status == "FINISHED"
    ref = single_process_losses()
    for key in ("train_loss", "val_loss"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in got] == [1, 2], key
        for (_, value), want in zip(got, ref):
            assert value == pytest.approx(want[key], rel=1e-4), (key, value, want[key])
    # each worker held one stage: 64*64+64 of the 6570 weights on the larger one
    assert run.data.metrics["stage_fraction_max"] == pytest.approx(4160 / 6570, abs=1e-6)


def test_pipeline_model_registers_and_reloads(sweep, tmp_path):
    import json

    import mlflow

    import dlopt

    mlflow.set_tracking_uri(sweep["uri"])
    client, run = sweep["client"], sweep["run"]
    version = client.get_model_version_by_alias("pipe-digits", "champion")
    assert version.tags["dlopt.source_run"] == run.info.run_id
    local = Path(mlflow.artifacts.download_artifacts("models:/pipe-digits@champion",
                                                     dst_path=str(tmp_path)))
    assert json.loads(next(local.rglob("meta.json")).read_text())["format"] != "dense"
    model = dlopt.load_model("models:/pipe-digits@champion")
    x, y = raw_digits_val(1, test_fraction=0.0)  # the registered model takes raw rows
    acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(run.data.metrics["compressed_val_accuracy"], abs=1e-6)
    assert acc > 0.8
