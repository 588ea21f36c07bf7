"""Pareto front and ranks on hand-made points (dlopt.pareto is pure Python)."""
import math

from dlopt.driver import pareto

OBJ = {"acc": "max", "bytes": "min"}


def pts(*pairs):
    return [{"acc": a, "bytes": b} for a, b in pairs]


def test_front_of_hand_made_points():
    points = pts((0.90, 100), (0.95, 200), (0.80, 50), (0.85, 150), (0.95, 300), (0.70, 50))
    # (0.85,150) is beaten by (0.90,100); (0.95,300) by (0.95,200); (0.70,50) by (0.80,50)
    assert pareto.front(points, OBJ) == [0, 1, 2]
    assert pareto.ranks(points, OBJ) == [1, 1, 1, 2, 2, 2]


def test_ranks_peel_successive_fronts():
    points = pts((1.0, 1), (0.9, 2), (0.8, 3), (0.7, 4))  # a chain: each dominates the next
    assert pareto.ranks(points, OBJ) == [1, 2, 3, 4]
    assert pareto.front(points, OBJ) == [0]


def test_equal_points_are_both_optimal():
    points = pts((0.9, 10), (0.9, 10), (0.8, 20))
    assert pareto.front(points, OBJ) == [0, 1]
    assert not pareto.dominates(points[0], points[1], OBJ)
    assert pareto.dominates(points[0], points[2], OBJ)


def test_three_objectives_and_min_max_directions():
    obj = {"acc": "max", "bytes": "min", "latency": "min"}
    points = [{"acc": 0.9, "bytes": 100, "latency": 1.0},
              {"acc": 0.9, "bytes": 100, "latency": 2.0},   # dominated by 0 (slower)
              {"acc": 0.8, "bytes": 50, "latency": 3.0},
              {"acc": 0.95, "bytes": 400, "latency": 0.5}]
    assert pareto.front(points, obj) == [0, 2, 3]
    ext = pareto.extremes(points, pareto.front(points, obj), obj)
    assert ext == {"acc": 3, "bytes": 2, "latency": 3}


def test_missing_or_nan_objectives_are_left_out():
    points = [{"acc": 0.9, "bytes": 100}, {"acc": math.nan, "bytes": 1}, {"acc": 0.99},
              {"acc": 0.5, "bytes": 500}]
    assert pareto.ranks(points, OBJ) == [1, None, None, 2]
    assert pareto.front(points, OBJ) == [0]


def test_empty_input():
    assert pareto.front([], OBJ) == []
    assert pareto.extremes([], [], OBJ) == {"acc": None, "bytes": None}


# ------------------------------------------------------------------ dlopt.front (pure parts)
def test_alias_targets_pick_the_fronts_extremes():
    from dlopt.driver.front import accuracy_objective, alias_targets

    obj = {"compressed_val_accuracy": "max", "model_bytes": "min"}
    points = [{"compressed_val_accuracy": 0.97, "model_bytes": 9000, "latency_ms": 0.3},
              {"compressed_val_accuracy": 0.90, "model_bytes": 3000, "latency_ms": 0.2},
              {"compressed_val_accuracy": 0.95, "model_bytes": 5000, "latency_ms": 0.1},
              {"compressed_val_accuracy": 0.89, "model_bytes": 9500, "latency_ms": 0.01}]  # dominated
    front = pareto.front(points, obj)
    assert front == [0, 1, 2]
    assert accuracy_objective(obj) == "compressed_val_accuracy"
    # fastest is chosen on the front only: the dominated (but quickest) point 3 is not a version
    assert alias_targets(points, front, obj) == {"most-accurate": 0, "smallest": 1, "fastest": 2}
    no_latency = [{k: v for k, v in p.items() if k != "latency_ms"} for p in points]
    assert "fastest" not in alias_targets(no_latency, front, obj)


def test_trials_csv_has_every_trial_with_its_rank():
    import csv
    import io
    from types import SimpleNamespace as T

    from dlopt.driver.front import trials_csv

    obj = {"acc": "max", "bytes": "min"}
    trials = [T(trial_id="a", run_id="r1", status="ok", metrics={"acc": 0.9, "bytes": 10},
                config={"optimizer.lr": 0.1}),
              T(trial_id="b", run_id=None, status="error", metrics={}, config={"optimizer.lr": 0.2})]
    rows = list(csv.DictReader(io.StringIO(trials_csv(trials, [1, None], obj))))
    assert [(r["trial_id"], r["pareto_rank"], r["acc"], r["optimizer.lr"]) for r in rows] == [
        ("a", "1", "0.9", "0.1"), ("b", "", "", "0.2")]
