"""The sweep review's text, tables and plots, built from hand-made trial summaries (no Ray, no MLflow)."""
import csv
import io
import re
import struct

import pytest

from dlopt import Data, Experiment, Model, Optimizer, Prune, Search, Tracking, tune
from dlopt.driver.finalize import TrialSummary
from dlopt.registry.versions import RegisteredModel
from dlopt.spec.plan import make_plan
from dlopt.driver.description import description
from dlopt.driver.plots import compression_png, learning_curves_png
from dlopt.driver.provenance import source_tags
from dlopt.driver.tables import (compression_report, compression_rows, results_csv, results_html,
                                 table, trial_rows)

SPEC = Experiment(
    name="digits-mlp", epochs=3, data=Data(dataset="digits"), model=Model(hidden=[32]),
    optimizer=Optimizer(name="sgd", lr=tune.choice([0.003, 0.03, 0.3])),
    compression=[Prune(sparsity=tune.choice([0.5, 0.9]))],
    search=Search(algorithm="random", num_samples=3, metric="val_accuracy", mode="max"),
    tracking=Tracking(experiment="digits", register_as="digits-mlp"))


def summary(i, lr, sparsity, acc, status="ok", model_bytes=10_000.0):
    metrics = {"val_accuracy": acc, "val_loss": 1 - acc, "train_loss": 1.1 - acc, "epoch": 3,
               "compressed_val_accuracy": acc - 0.01, "model_bytes": model_bytes,
               "dense_bytes": 40_000.0, "compression_ratio": 40_000.0 / model_bytes,
               "time_total_s": 12.0, "final": 1, "trial_id": f"t{i}"}
    return TrialSummary(trial_id=f"t{i}", run_id=f"run{i}", config={}, metrics=metrics,
                        status=status, checkpoint_path=f"/ckpt/t{i}")


@pytest.fixture
def rows():
    trials = [summary(1, 0.003, 0.5, 0.91), summary(2, 0.03, 0.9, 0.97, model_bytes=4_000.0),
              summary(3, 0.3, 0.9, float("nan"), status="diverged")]
    names = {f"t{i}": f"trial-00{i} lr={lr} sparsity={s}" for i, lr, s in
             [(1, 0.003, 0.5), (2, 0.03, 0.9), (3, 0.3, 0.9)]}
    assign = {f"t{i}": {"optimizer.lr": lr, "compression.0.sparsity": s} for i, lr, s in
              [(1, 0.003, 0.5), (2, 0.03, 0.9), (3, 0.3, 0.9)]}
    return trial_rows(trials, names, assign)


def test_rows_keep_metrics_and_drop_tune_bookkeeping(rows):
    assert rows[1]["name"] == "trial-002 lr=0.03 sparsity=0.9"
    assert rows[1]["metrics"]["val_accuracy"] == 0.97
    assert not {"time_total_s", "final", "trial_id"} & set(rows[1]["metrics"])
    assert rows[1]["params"] == {"optimizer.lr": 0.03, "compression.0.sparsity": 0.9}


def test_table_is_best_first_and_failed_trials_last(rows):
    header, cells = table(rows, "val_accuracy", "max")
    assert header[:5] == ["trial", "status", "optimizer.lr", "compression.0.sparsity", "val_accuracy"]
    assert [c[0][:9] for c in cells] == ["trial-002", "trial-001", "trial-003"]
    assert cells[-1][1] == "diverged"
    _, cells_min = table(rows, "val_loss", "min")
    assert [c[0][:9] for c in cells_min] == ["trial-002", "trial-001", "trial-003"]


def test_results_csv_has_every_trial_and_metric(rows):
    parsed = list(csv.DictReader(io.StringIO(results_csv(rows, "val_accuracy", "max"))))
    assert len(parsed) == 3
    assert parsed[0]["trial"] == "trial-002 lr=0.03 sparsity=0.9"
    assert float(parsed[0]["model_bytes"]) == 4000.0 and parsed[0]["run_id"] == "run2"
    assert parsed[0]["optimizer.lr"] == "0.03" and parsed[2]["status"] == "diverged"


def test_results_html_is_escaped_table(rows):
    rows[0]["name"] = "trial-001 <b>"
    page = results_html(rows, "val_accuracy", "max", "sweep-x")
    assert page.count("<tr>") == 4 and "trial-001 &lt;b&gt;" in page and "<b>" not in page


def test_description_names_best_trial_registered_model_and_command(rows):
    plan = make_plan(SPEC)
    text = description(plan=plan, rows=rows, best_id="t2",
                       registered=[RegisteredModel(name="digits-mlp", version="3", alias="champion",
                                                   run_id="run2", trial_id="t2")],
                       experiment_id="7", parent_run_id="parent1",
                       command="dlopt run experiments/digits_mlp.py --set epochs=3",
                       commit="abc123", source="experiments/digits_mlp.py",
                       artifacts=["review/learning_curves.png", "review/results.csv"],
                       compression=True)
    run = "(#/experiments/7/runs/{}?workflowType=machine_learning)"
    lines = text.splitlines()
    # the outcome first: the UI shows these lines before "Show more"
    assert lines[0] == f"## digits-mlp: sweep `{plan.sweep_name}`"
    assert lines[2].startswith("**2/3 trials ok**; random search over `optimizer.lr`, "
                               "`compression.0.sparsity`, objective val_accuracy (max)")
    assert lines[4] == ("**Best trial:** [trial-002 lr=0.03 sparsity=0.9]" + run.format("run2")
                        + ": **val_accuracy = 0.97**; val_loss 0.03; train_loss 0.13; "
                        "compressed_val_accuracy 0.96; model_bytes 4,000; dense_bytes 40,000")
    assert lines[6] == ("**Registered:** [digits-mlp version 3](#/models/digits-mlp/versions/3) as "
                        "`@champion`, from trial-002 lr=0.03 sparsity=0.9: "
                        '`dlopt.load_model("models:/digits-mlp@champion")`')
    assert "| optimizer.lr | choice(0.003, 0.03, 0.3) |" in text
    assert "Compression stages: `prune`." in text
    assert "```\ngit checkout abc123\ndlopt run experiments/digits_mlp.py --set epochs=3\n```" in text
    assert "![learning_curves](get-artifact?path=review%2Flearning_curves.png&run_uuid=parent1)" in text
    # trials table: best first, each name linked to its run, failed trials last
    trial_lines = [l for l in lines if l.startswith("| [trial-")]
    assert [re.match(r"\| \[(trial-\d+)", l).group(1) for l in trial_lines] == \
        ["trial-002", "trial-001", "trial-003"]
    assert (run.format("run3") + " | diverged |") in trial_lines[2]
    assert trial_lines[0].split(" | ")[2:5] == ["0.03", "0.9", "0.97"]


def test_description_without_a_healthy_trial(rows):
    for r in rows:
        r["status"] = "error"
    text = description(plan=make_plan(SPEC), rows=rows, best_id=None, registered=[],
                       experiment_id="1", parent_run_id="p", command=None, commit=None,
                       source=None, artifacts=[])
    assert "**0/3 trials ok**" in text and "No healthy trial finished" in text
    assert "Registered models" not in text and "dlopt run SPEC" in text


def test_compression_table_sorted_by_bytes_and_report(rows):
    header, cells = compression_rows(rows)
    assert header[:4] == ["trial", "status", "compressed_val_accuracy", "val_accuracy"]
    assert [c[0][:9] for c in cells][0] == "trial-002"
    report = compression_report(rows[1], [{"kind": "prune", "sparsity": 0.9}])
    assert report["model_bytes"] == 4000.0 and report["bytes_saved"] == 36000.0
    assert report["accuracy_change"] == pytest.approx(-0.01)
    assert report["stages"][0]["sparsity"] == 0.9


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_are_small_pngs(rows, tmp_path):
    hist = {f"t{i}": {"train_loss": [(1, 1.0), (2, 0.5), (3, 0.3)],
                      "val_accuracy": [(1, 0.5), (2, 0.8), (3, 0.9 + i / 100)]} for i in (1, 2, 3)}
    out = learning_curves_png(rows, hist, tmp_path / "curves.png", "val_accuracy", "max", "t2")
    width, height = png_size(out)
    assert 500 < width < 1400 and 200 < height < 600
    assert out.stat().st_size < 200_000
    assert learning_curves_png(rows, {}, tmp_path / "none.png", "val_accuracy", "max") is None
    assert png_size(compression_png(rows, hist, tmp_path / "c.png", "val_accuracy", "max", "t2"))[0] > 300


def test_source_tags_name_the_experiment_file_and_command():
    tags = source_tags(["/x/.venv/bin/dlopt", "run", "experiments/digits_mlp.py", "--set",
                        "epochs=3"], spec_file="experiments/digits_mlp.py", commit="abc")
    assert tags["mlflow.source.name"] == "experiments/digits_mlp.py"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.git.commit"] == "abc"
    assert tags["dlopt.command"] == "dlopt run experiments/digits_mlp.py --set epochs=3"
    assert tags["mlflow.user"]
    module = source_tags(["/x/platform/dlopt/cli/__main__.py", "run", "--storage", "/tmp/r", "e x.py"],
                         spec_file="e x.py")
    assert module["mlflow.source.name"] == "e x.py"
    assert module["dlopt.command"] == "dlopt run --storage /tmp/r 'e x.py'"
    api = source_tags(["train.py", "--fast"], find_commit=False)
    assert api["mlflow.source.name"] == "train.py" and api["dlopt.command"] == "python train.py --fast"
    assert "mlflow.source.git.commit" not in api


def test_a_version_without_an_alias_is_named_by_its_version(rows):
    """A Pareto-optimal version no alias points at loads by version, never `@None`."""
    reg = RegisteredModel(name="digits-mlp", version="4", alias=None, run_id="run1",
                          trial_id="t1", pareto_rank=1, objectives={"val_accuracy": 0.9})
    assert reg.uri == "models:/digits-mlp/4"
    assert RegisteredModel(name="m", version="2", alias="smallest", run_id=None,
                           trial_id="t").uri == "models:/m@smallest"
    text = description(plan=make_plan(SPEC), rows=rows, best_id="t2", registered=[reg],
                       experiment_id="1", parent_run_id="p", command=None, commit=None,
                       source=None, artifacts=[])
    assert "@None" not in text and '`dlopt.load_model("models:/digits-mlp/4")`' in text
