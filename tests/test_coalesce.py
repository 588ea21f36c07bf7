"""dlopt.tracking.coalesce: a run's queued writes merged into one log_batch, order kept."""
from collections import deque

from dlopt.tracking.coalesce import MAX_METRICS, take


def batch(seq, ref, metrics=(), params=()):
    return {"seq": seq, "op": "log_batch", "ref": ref, "metrics": [list(m) for m in metrics],
            "params": [list(p) for p in params]}


def tag(seq, ref, key, value):
    return {"seq": seq, "op": "set_tag", "ref": ref, "key": key, "value": value}


def test_a_runs_writes_merge_past_other_runs_and_stop_at_another_kind():
    pending = deque([
        batch(1, "a", params=[("lr", "0.1")]),
        {"seq": 2, "op": "create_run", "trial": "b", "name": "b", "tags": {}},
        batch(3, "a", metrics=[("loss", 1.0, 10, 1)]),
        batch(4, "b", metrics=[("loss", 2.0, 11, 1)]),
        tag(5, "a", "dlopt.status", "diverged"),
        {"seq": 6, "op": "set_terminated", "ref": "a", "status": "FINISHED"},
        batch(7, "a", metrics=[("loss", 0.5, 12, 2)]),  # after the run ended: not before it
    ])
    rec, group = take(pending)
    assert [r["seq"] for r in group] == [1, 3, 5]
    assert rec == {"op": "log_batch", "ref": "a", "params": [["lr", "0.1"]],
                   "metrics": [["loss", 1.0, 10, 1]], "tags": [["dlopt.status", "diverged"]]}


def test_non_mergeable_head_and_a_lone_batch_go_as_they_are():
    create = {"seq": 1, "op": "create_run", "trial": "a", "name": "a", "tags": {}}
    assert take(deque([create, batch(2, "a")])) == (create, [create])
    lone = batch(1, "a", metrics=[("loss", 1.0, 10, 1)])
    assert take(deque([lone, batch(2, "b")])) == (lone, [lone])


def test_a_repeated_key_or_a_full_batch_ends_the_merge():
    pending = deque([tag(1, "a", "k", "1"), batch(2, "a", params=[("p", "x")]), tag(3, "a", "k", "2"),
                     tag(4, "a", "j", "3")])
    _, group = take(pending)
    assert [r["seq"] for r in group] == [1, 2]  # the second value of k waits for its own request
    full = [("m", float(i), 0, i) for i in range(MAX_METRICS - 1)]
    pending = deque([batch(1, "a", metrics=full), batch(2, "a", metrics=[("x", 1.0, 0, 1)] * 2),
                     batch(3, "a", metrics=[("y", 1.0, 0, 1)])])
    rec, group = take(pending)
    assert [r["seq"] for r in group] == [1] and rec is pending[0]


def test_a_merge_reaches_past_the_runs_artifact_and_dataset_input_but_not_its_end():
    artifact = {"seq": 2, "op": "log_artifact", "ref": "a", "name": "spec.json", "text": "{}"}
    inputs = {"seq": 3, "op": "log_inputs", "ref": "a", "dataset": {}}
    end = {"seq": 5, "op": "set_terminated", "ref": "a", "status": "FINISHED"}
    pending = deque([batch(1, "a", params=[("lr", "0.1")]), artifact, inputs,
                     batch(4, "a", metrics=[("loss", 1.0, 10, 1)]), end,
                     batch(6, "a", metrics=[("loss", 0.5, 12, 2)])])
    rec, group = take(pending)
    assert [r["seq"] for r in group] == [1, 4]
    assert rec["params"] == [["lr", "0.1"]] and rec["metrics"] == [["loss", 1.0, 10, 1]]
