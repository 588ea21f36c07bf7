"""Queued MLflow writes of one run, merged into one `log_batch` request.

Each store request costs the driver CPU (a SQL transaction, or an HTTP round trip) whatever
it carries; most of a trial's writes are small (the params, one epoch's metrics, the final
metrics, a tag). When the writer falls behind, the queue holds several of them for the same
run, and one `log_batch` (up to MLflow's limits: 1,000 metrics, 100 params, 100 tags, 1,000
items) takes them all. Per run the order is kept: a run's records are merged only up to its
first record of another kind that does not commute with them (`set_terminated`), and a key
already in the batch ends it (a later value of the same param or tag is never reordered before
an earlier one). A run's artifact and dataset-input records commute with its params, metrics
and tags (they touch other tables), so a merge reaches past them. Records of other runs are
left where they are: runs do not depend on each other. Nothing here talks to MLflow.
"""
from __future__ import annotations

from collections import deque
from itertools import islice

MERGEABLE = ("log_batch", "set_tag")
COMMUTING = ("log_artifact", "log_inputs")  # a merge reaches past these of the same run
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ITEMS = 1000, 100, 100, 1000
LOOKAHEAD = 256  # records scanned past the head: bounded work per request on a long queue


def items(rec: dict) -> tuple[list, list, list]:
    """(metrics, params, tags) of a mergeable record."""
    if rec["op"] == "set_tag":
        return [], [], [[rec["key"], rec["value"]]]
    return list(rec.get("metrics", ())), list(rec.get("params", ())), list(rec.get("tags", ()))


def take(pending: deque) -> tuple[dict, list[dict]]:
    """The request to make for the head of `pending`, and the queued records it covers."""
    head = pending[0]
    if head["op"] not in MERGEABLE:
        return head, [head]
    ref = head["ref"]
    metrics, params, tags = items(head)
    keys = {("p", p[0]) for p in params} | {("t", t[0]) for t in tags}
    group = [head]
    for rec in islice(pending, 1, LOOKAHEAD):
        if rec.get("ref") != ref or rec["op"] in COMMUTING:
            continue
        if rec["op"] not in MERGEABLE:
            break
        m, p, t = items(rec)
        new = {("p", x[0]) for x in p} | {("t", x[0]) for x in t}
        if (new & keys or len(metrics) + len(m) > MAX_METRICS or len(params) + len(p) > MAX_PARAMS
                or len(tags) + len(t) > MAX_TAGS
                or len(metrics) + len(m) + len(params) + len(p) + len(tags) + len(t) > MAX_ITEMS):
            break
        metrics += m
        params += p
        tags += t
        keys |= new
        group.append(rec)
    if len(group) == 1 and head["op"] == "log_batch":
        return head, group
    return {"op": "log_batch", "ref": ref, "metrics": metrics, "params": params,
            "tags": tags}, group
