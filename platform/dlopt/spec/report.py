"""The trial report protocol: the keys a trial's reports carry besides metric values.

A training loop reports a dict per report (dlopt.train.loop -> `report(metrics, ...)`);
Ray Tune adds its own bookkeeping keys; the driver (dlopt.tracking.callback, dlopt.driver)
reads them back. Every key that is not a metric is named here once, so the writer and the
readers cannot drift (docs/architecture.md, "Report protocol"). Pure Python: no Ray, no torch.
"""
from __future__ import annotations

# --- keys dlopt's loop writes
EPOCH = "epoch"  # 1-based epoch the metrics belong to; MLflow's step
FINAL = "final"  # 1 on a trial's last report (after compression); it repeats the last epoch
DIVERGED = "diverged"  # 1 when the loss went non-finite and the trial stopped
HISTORY = "epoch_history"  # earlier unreported epochs' metrics, oldest first (dlopt.train.cadence)
END_TIME = "epoch_end_time"  # unix seconds at the end of the epoch (its MLflow timestamp)
EPOCH_SECONDS = "epoch_seconds"  # wall time of the epoch's training and validation
REPORT_SECONDS = "report_seconds"  # what the previous report cost the loop
WORKER_NODES = "worker_nodes"  # final report of a multi-worker trial: where its ranks ran

# --- keys Tune adds to every result, and where a result's checkpoint lives
CHECKPOINT_PATH = "checkpoint_path"
TUNE_BOOKKEEPING = frozenset({
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done",
    "time_since_restore", "iterations_since_restore", "date", "hostname", "node_ip", "trial_id",
    "experiment_tag", "config",
})

# Keys of a result that are never metric values (tables, MLflow and plots skip them).
NOT_METRICS = TUNE_BOOKKEEPING | {CHECKPOINT_PATH, FINAL, EPOCH, DIVERGED, END_TIME, HISTORY}

# Logged once per epoch; the final report repeats them, so it logs only what is new.
PER_EPOCH_METRICS = frozenset({
    "train_loss", "val_loss", "val_accuracy", "lr", EPOCH_SECONDS, "val_mse", "val_mae", "val_r2",
    "val_precision", "val_recall", "val_f1", "val_top5_accuracy", REPORT_SECONDS,
})
