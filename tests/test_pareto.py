"""Pareto front and ranks on hand-made points (dlopt.pareto is pure Python)."""
import math

from dlopt import pareto

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
