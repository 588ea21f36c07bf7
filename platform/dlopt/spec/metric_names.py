"""Metric names a trial reports: per epoch by task, and only at the end (compression)."""

# Metrics a trial reports only in its final (compression) report, never per epoch.
FINAL_METRICS = ("compressed_val_accuracy", "model_bytes", "dense_bytes", "compression_ratio",
                 "sparsity", "latency_ms", "param_count", "flops", "dense_param_count",
                 "dense_flops", "onnx_bytes", "onnx_val_accuracy", "onnx_agreement",
                 "onnx_latency_ms")
# Per-epoch validation metrics by task (names from dlopt.ml.metrics with the prefix val_;
# tests/test_metrics.py checks the two agree). val_top5_accuracy needs more than 5 classes.
VAL_METRICS = {
    "classification": ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                       "val_top5_accuracy"),
    "regression": ("val_loss", "val_mse", "val_mae", "val_r2"),
}
