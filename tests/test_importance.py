"""What mattered: importance ranking (Optuna PED-ANOVA) and the parallel-coordinates files,
built from review rows of a synthetic sweep where the metric depends on lr only."""
import math
import random

from dlopt import Data, Experiment, Optimizer, Search, tune
from dlopt.driver import importance
from dlopt.driver.description import description
from dlopt.spec.plan import make_plan

PLAN = make_plan(Experiment(
    name="imp", optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1), momentum=tune.uniform(0.0, 0.95)),
    data=Data(batch_size=tune.choice([16, 32, 64])),
    search=Search(algorithm="random", num_samples=60)), cluster_cpus=2)


def rows(n=60, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, -1)
        params = {"optimizer.lr": lr, "optimizer.momentum": rng.uniform(0.0, 0.95),
                  "data.batch_size": rng.choice([16, 32, 64])}
        accuracy = 0.95 - 0.1 * (math.log10(lr) + 2.5) ** 2  # lr alone decides
        out.append({"name": f"t{i}", "trial_id": f"t{i}", "status": "ok", "run_id": None,
                    "params": params, "metrics": {"val_accuracy": accuracy}, "epoch": 2,
                    "checkpoint": None})
    out.append({**out[0], "name": "bad", "trial_id": "bad", "status": "diverged",
                "metrics": {"val_accuracy": float("nan")}})  # left out
    return out


def test_a_parameter_that_does_not_matter_ranks_below_the_one_that_does():
    found = importance.param_importances(PLAN, rows())
    assert list(found)[0] == "optimizer.lr"
    assert found["optimizer.lr"] > 0.5
    assert found["optimizer.momentum"] < found["optimizer.lr"] / 3
    assert found["data.batch_size"] < found["optimizer.lr"] / 3
    assert abs(sum(found.values()) - 1) < 1e-6


def test_too_few_trials_give_no_ranking():
    assert importance.param_importances(PLAN, rows(3)) == {}


def test_review_files_and_the_description_section(tmp_path):
    found = importance.write(PLAN, rows(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "importance.png", "parallel_coordinates.png", "parallel_coordinates.html"}
    page = (tmp_path / "parallel_coordinates.html").read_text()
    assert page.count("<polyline") == 60 and "optimizer.lr" in page and "<script" not in page
    arts = ["review/importance.png", "review/parallel_coordinates.html",
            "review/parallel_coordinates.png"]
    text = description(plan=PLAN, rows=rows(), best_id="t0", registered=[], experiment_id="1",
                       parent_run_id="p", command=None, commit=None, source=None,
                       artifacts=arts, importances=found, stopped="all 60 trials ran")
    assert "**Stopped:** all 60 trials ran." in text
    assert "### What mattered" in text and "`optimizer.lr` " in text
    assert "parallel_coordinates.html" in text and "![importance]" in text
