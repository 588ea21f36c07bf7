"""Compression: the LeNet-300-100-shaped MLP on digits, dense vs pruned vs pruned+int8.

Written against the spec API only (Prune / Quantize stages): each variant is one spec
trained by `dlopt.train.loop.fit` in this process (no Ray needed: the loop and its stages
are the same code a trial runs). The saved artifact is the one a trial would register;
it is rebuilt with `dlopt.artifact.build_from_dir` and timed at batch 1 and 256 on CPU.

Anchor (Han et al., Deep Compression, ICLR 2016, LeNet-300-100 on MNIST): 1070 KB -> 27 KB
(40x) with pruning + quantization + Huffman coding; pruning alone 12x (8% weights kept),
accuracy unchanged (1.64% -> 1.58% error). Digits has 64 inputs, not 784: the same
hidden shape [300, 100] is a 64-300-100-10 network (50,610 parameters, ~198 KiB fp32).

    python benchmarks/compression.py [--epochs 30] [--sparsity 0.92]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_RATIO, TARGET_DROP_POINTS = 10.0, 0.5
ANCHOR = [
    {"variant": "Deep Compression: dense (MNIST, 784-300-100-10)", "bytes": 1070 * 1024, "ratio": 1.0},
    {"variant": "Deep Compression: pruned", "bytes": None, "ratio": 12.0},
    {"variant": "Deep Compression: pruned + quantized + Huffman", "bytes": 27 * 1024, "ratio": 40.0},
]


def make_spec(epochs: int, compression: list, name: str):
    from dlopt import Data, Experiment, Model, Optimizer

    return Experiment(
        name=name, seed=0, epochs=epochs,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="mlp", hidden=[300, 100], activation="relu"),
        optimizer=Optimizer(name="adam", lr=1e-3),
        compression=compression,
    )


def variants(epochs: int, sparsity: float) -> dict:
    from dlopt import Prune, Quantize

    prune = Prune(method="magnitude", scope="global", sparsity=sparsity, schedule="gradual",
                  start_epoch=2, end_epoch=max(3, epochs * 2 // 3))
    return {
        "dense": [],
        "pruned": [prune],
        "pruned+int8": [prune, Quantize(method="dynamic", dtype="int8")],
    }


def latency_ms(model, batch: int, inputs: int, repeats: int = 50) -> float:
    import torch

    x = torch.randn(batch, inputs)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run_variant(spec, work: Path) -> dict:
    import torch

    from dlopt.artifact import files as artifact

    from dlopt.ml import data as data_mod
    from dlopt.train.loop import fit

    final: dict = {}
    saved = work / spec.name

    def report(metrics, write=None):
        if metrics.get("final"):
            final.update(metrics)
            if write is not None:
                write(saved)

    t0 = time.perf_counter()
    state = fit(spec, report)
    train_s = time.perf_counter() - t0
    model = artifact.build_from_dir(saved)
    val = data_mod.load(spec.data, spec.seed).val
    with torch.no_grad():
        loaded_acc = (model(val.x).argmax(1) == val.y).float().mean().item()
    inputs = val.x.shape[1]
    return {"bytes": final.get("model_bytes"), "dense_bytes": final.get("dense_bytes"),
            "ratio": final.get("compression_ratio"), "sparsity": final.get("sparsity", 0.0),
            "val_accuracy_before": state.metrics.get("val_accuracy"),
            "accuracy": final.get("compressed_val_accuracy"), "loaded_accuracy": loaded_acc,
            "lat_b1_ms": latency_ms(model, 1, inputs), "lat_b256_ms": latency_ms(model, 256, inputs),
            "train_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--sparsity", type=float, default=0.92)
    args = ap.parse_args()
    try:
        from dlopt.stages import compression  # noqa: F401  (built by another issue)
    except ImportError as err:
        print(f"blocked: dlopt.stages.compression is not importable ({err})")
        sys.exit(1)

    rows = []
    with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
        for name, stages in variants(args.epochs, args.sparsity).items():
            spec = make_spec(args.epochs, stages, f"bench-compress-{name.replace('+', '-')}")
            row = {"variant": name, **run_variant(spec, Path(work))}
            rows.append(row)
            print(common.table([row], list(row)))
    dense = rows[0]
    for r in rows:
        r["ratio_vs_dense_file"] = dense["bytes"] / r["bytes"] if r["bytes"] else None
        r["drop_points"] = (dense["accuracy"] - r["accuracy"]) * 100
    cols = ["variant", "bytes", "ratio", "ratio_vs_dense_file", "sparsity", "accuracy",
            "loaded_accuracy", "drop_points", "lat_b1_ms", "lat_b256_ms", "train_s"]
    text = common.table(rows, cols)
    anchor = common.table(ANCHOR, ["variant", "bytes", "ratio"])
    print(text)
    best = rows[-1]
    verdict = (f"- pruned+int8: {best['ratio']:.1f}x bytes (target >= {TARGET_RATIO}x) at "
               f"{best['drop_points']:.2f} points accuracy drop (target <= {TARGET_DROP_POINTS}); "
               f"pruned alone {rows[1]['ratio']:.1f}x (Deep Compression: 12x)\n")
    md = (f"digits, MLP 64-300-100-10 (LeNet-300-100 hidden shape), Adam 1e-3, {args.epochs} "
          f"epochs, seed 0; Prune(global magnitude, sparsity {args.sparsity}, gradual), "
          "Quantize(dynamic int8). ratio: dense fp32 bytes / saved artifact bytes (the "
          "trial's `compression_ratio`); accuracy: validation accuracy of the compressed "
          "model (`compressed_val_accuracy`); loaded_accuracy: the saved artifact rebuilt "
          "by `artifact.build_from_dir`; latency: median CPU forward of the loaded model.\n\n"
          + text + "\n\nAnchor (Han et al. 2016, LeNet-300-100 on MNIST):\n\n" + anchor +
          "\n\n" + verdict)
    common.write("compression", "Compression", {"rows": rows, "args": vars(args)}, md)


if __name__ == "__main__":
    main()
