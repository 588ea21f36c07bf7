"""GPU throughput: samples/s through dlopt vs the bare loop, and the bf16-mixed speed-up.

Needs a CUDA machine (exits with a message otherwise). Synthetic classification data
(200k x 256, 10 classes), MLP 256-1024-1024-10, batch 1024:
- bare: `dlopt.train.loop.fit` on "cuda" in this process, precision "32" then "bf16-mixed";
- dlopt: `dlopt.driver.sweep.run` of the same spec, Resources(num_workers=1, use_gpu=True).
samples/s = train samples / median in-loop `epoch_seconds` (epoch 1, the warm-up, dropped).

    python benchmarks/gpu.py [--epochs 5] [--samples 200000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def make_spec(epochs: int, samples: int, precision: str, use_gpu: bool):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking

    return Experiment(
        name=f"bench-gpu-{precision}", seed=0, epochs=epochs, precision=precision,
        data=Data(dataset="synthetic", n_samples=samples, n_features=256, n_classes=10,
                  batch_size=1024),
        model=Model(arch="mlp", hidden=[1024, 1024]),
        optimizer=Optimizer(name="adam", lr=1e-3),
        search=Search(num_samples=1),
        resources=Resources(num_workers=1, use_gpu=use_gpu),
        tracking=Tracking(experiment="bench"),
    )


def samples_per_s(epoch_seconds: list[float], train_samples: int) -> float:
    steady = epoch_seconds[1:] or epoch_seconds
    return train_samples / statistics.median(steady)


def bare(spec) -> tuple[float, float]:
    from dlopt.train.loop import fit

    secs: list[float] = []
    state = fit(spec, lambda m, w=None: None if m.get("final") else secs.append(m["epoch_seconds"]),
                device="cuda")
    return samples_per_s(secs, len(state.datasets.train)), state.metrics.get("val_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU machine")
        sys.exit(1)
    from mlflow.tracking import MlflowClient

    from dlopt.driver.sweep import run

    rows = []
    for precision in ("32", "bf16-mixed"):
        spec = make_spec(args.epochs, args.samples, precision, use_gpu=True)
        sps, acc = bare(spec)
        rows.append({"side": "bare loop", "precision": precision, "samples_per_s": sps,
                     "val_accuracy": acc})
        with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
            uri = f"sqlite:///{work}/mlflow.db"
            result = run(spec, tracking_uri=uri, storage=f"{work}/ray_results", progress=False)
            trial = result.trials[0]
            hist = sorted(MlflowClient(uri).get_metric_history(trial.run_id, "epoch_seconds"),
                          key=lambda m: m.step)
            train_n = round(args.samples * (1 - spec.data.val_fraction - spec.data.test_fraction))
            rows.append({"side": "dlopt.driver.sweep.run", "precision": precision,
                         "samples_per_s": samples_per_s([m.value for m in hist], train_n),
                         "val_accuracy": trial.metrics.get("val_accuracy")})
    for r in rows:
        same = [b for b in rows if b["side"] == "bare loop" and b["precision"] == r["precision"]][0]
        r["vs_bare"] = r["samples_per_s"] / same["samples_per_s"]
        fp32 = [b for b in rows if b["side"] == r["side"] and b["precision"] == "32"][0]
        r["bf16_speedup"] = r["samples_per_s"] / fp32["samples_per_s"]
    text = common.table(rows, ["side", "precision", "samples_per_s", "vs_bare", "bf16_speedup",
                               "val_accuracy"])
    print(text)
    common.write("gpu", "GPU throughput", {"rows": rows, "args": vars(args),
                                           "gpu": torch.cuda.get_device_name(0)},
                 f"GPU: {torch.cuda.get_device_name(0)}. {args.samples} synthetic samples x 256, "
                 "MLP 256-1024-1024-10, batch 1024, Adam.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
