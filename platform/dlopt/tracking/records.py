"""The Tracker's write records: how each is built from a trial's data, and how it is made.

A record is plain JSON (it is journaled, dlopt.tracking.journal) and every one is idempotent
(docs/architecture.md, "One MLflow writer: the driver"): a retried or replayed `create_run`
looks for the run before it creates it, a metric carries its own timestamp. The queue that
orders, retries and journals them is dlopt.tracking.store.Tracker.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Optional

from mlflow.entities import Metric, Param, RunTag

from dlopt.spec.report import END_TIME, EPOCH, HISTORY
from dlopt.tracking.names import numeric_metrics

# MLflow's log_batch limit: 1000 metrics per request
BATCH_METRICS = 1000


def create_child(client, experiment_id: str, rec: dict):
    """The trial's child run: found (a retried or replayed record whose first attempt may
    have landed) or created."""
    found = rec.get("retried") and client.search_runs(
        [experiment_id], f"tags.`dlopt.trial_id` = '{rec['trial']}' and "
        f"tags.`mlflow.parentRunId` = '{rec['tags']['mlflow.parentRunId']}'")
    return found[0] if found else client.create_run(experiment_id, run_name=rec["name"],
                                                    tags=rec["tags"])


def apply_write(client, artifacts, run_id: str, rec: dict) -> None:
    """Make one record other than `create_run` against the run `run_id`."""
    op = rec["op"]
    if op == "log_batch":
        client.log_batch(run_id, metrics=[Metric(*m) for m in rec.get("metrics", ())],
                         params=[Param(*p) for p in rec.get("params", ())],
                         tags=[RunTag(*t) for t in rec.get("tags", ())])
    elif op == "set_tag":
        client.set_tag(run_id, rec["key"], rec["value"])
    elif op == "set_terminated":
        client.set_terminated(run_id, status=rec["status"])
    elif op == "log_inputs":  # MLflow keeps one input per (run, dataset digest)
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        client.log_inputs(run_id, datasets=[DatasetInput(
            Dataset(**rec["dataset"]), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
    elif op == "log_artifact":
        artifacts.write_text(client, run_id, rec["name"], rec["text"])
    else:
        raise ValueError(f"unknown tracking write {op!r}")


def dataset_input(trial_id: str, spec_json: dict) -> Optional[dict]:
    """The trial's training data as an MLflow dataset input (the runs table's Dataset
    column): named by the data spec, its digest the split-defining settings. Built from
    the spec on the driver; the data itself is only loaded on the workers. None without
    a dataset."""
    data = spec_json.get("data") or {}
    if not data.get("dataset"):
        return None
    key = json.dumps([data, spec_json.get("seed")], sort_keys=True, default=str)
    return {"op": "log_inputs", "ref": trial_id, "dataset": {
        "name": str(data["dataset"]), "digest": hashlib.sha256(key.encode()).hexdigest()[:8],
        "source_type": "code", "source": json.dumps({"tags": {"dlopt.data": key}}),
        "profile": json.dumps({k: data.get(k) for k in ("val_fraction", "test_fraction")}
                              | {"seed": spec_json.get("seed")})}}


def epoch_metrics(result: dict, last_epoch: int, now: int) -> tuple[list[list], int]:
    """The metric rows ([key, value, timestamp, epoch]) of the epochs in a trial report
    (its batched history, then itself) later than `last_epoch`, and the last epoch now.
    An epoch a restarted worker reports again is skipped; each row is stamped with its
    epoch's own end, not the report's arrival."""
    batch = []
    for item in [*(result.get(HISTORY) or []), result]:
        epoch = int(item.get(EPOCH, 0))
        if epoch <= last_epoch:
            continue
        last_epoch = epoch
        at = int(item[END_TIME] * 1000) if END_TIME in item else now
        batch += [[k, v if math.isfinite(v) else float("nan"), at, epoch]
                  for k, v in numeric_metrics(item).items()]
    return batch, last_epoch
