"""Compression that pays at inference: bytes, accuracy over seeds, and CPU latency.

Two parts, each written against the spec API and trained by `dlopt.train.loop.fit` in this
process (the code a trial runs, without Ray); every model timed is the saved artifact rebuilt
the way serving rebuilds it.

1. Size and accuracy, the shipped recipe `experiments/compress_lenet300.py` (gradual global
   magnitude pruning to 90% + int8) against the same spec trained dense, over `--seeds`
   seeds: mean and spread (sample standard deviation) of validation accuracy, bytes of the
   saved PyTorch weights (`model_bytes`, compact sparse int8) and of the int8 ONNX model
   served (`onnx_bytes`), and the ONNX model's agreement with PyTorch (`onnx_agreement`).
   Anchor (Han et al., Deep Compression, ICLR 2016, LeNet-300-100 on MNIST): 1070 KB ->
   27 KB (40x) with pruning + quantization + Huffman coding at no accuracy loss; digits has
   64 inputs, so [300, 100] is a 64-300-100-10 network (50,610 parameters).
2. Latency at batch 1 and 256, one thread for everyone (`torch.set_num_threads(1)`, ONNX
   Runtime intra/inter-op threads 1), median of `--repeats` calls, the variants interleaved
   round by round so that load from other processes hits them alike:
   dense fp32 (PyTorch), dense fp32 (ONNX Runtime, for reference), int8 (ONNX Runtime),
   pruned = structured 75% with the units removed (PyTorch), pruned + int8 (ONNX Runtime);
   for the LeNet-300-100-shaped MLP, a wider 64-1024-1024-10 MLP (dynamic int8) and the
   `cnn` (static QDQ int8; ONNX Runtime's dynamic ConvInteger is timed beside it).

3. `--sharing` (alone): Deep Compression's full recipe on a 784-input LeNet-300-100 (the
   IDX files of MNIST under `--mnist-root` when given, else sklearn's digits upsampled to
   28x28 and written as IDX files, said in the output): gradual global pruning + weight sharing
   (k-means, `--bits`, centroids fine-tuned) + entropy-coded indices, against the same spec
   dense, per seed; bytes are the saved compact artifact's.

    python benchmarks/compression.py [--seeds 5] [--repeats 200] [--latency-only]
    python benchmarks/compression.py --sharing [--seeds 5] [--bits 5] [--mnist-root DIR]
        [--allocation sensitivity]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "experiments" / "compress_lenet300.py"
TARGET_SIZE, TARGET_DROP_POINTS, TARGET_SPEEDUP = 40.0, 0.5, 2.0


def train(spec, work: Path) -> tuple[dict, Path]:
    from dlopt.train.loop import fit

    final: dict = {}
    saved = work / f"{spec.name}-{spec.seed}"

    def report(metrics, write=None):
        if metrics.get("final"):
            final.update(metrics)
            if write is not None:
                write(saved)

    fit(spec, report)
    return final, saved


# ------------------------------------------------------------------ part 1: size and accuracy
def recipe_seeds(seeds: int, work: Path) -> tuple[list[dict], dict]:
    from dlopt import Experiment
    from dlopt.spec.load import load as load_spec

    base = load_spec(str(RECIPE)).model_dump(mode="json")
    rows = []
    for seed in range(seeds):
        row = {"seed": seed}
        for kind in ("dense", "compressed"):
            data = {**base, "seed": seed, "name": f"bench-{kind}"}
            if kind == "dense":
                data["compression"] = []
            t0 = time.perf_counter()
            m, _ = train(Experiment.model_validate(data), work)
            row[f"{kind}_s"] = time.perf_counter() - t0
            if kind == "dense":
                row.update(dense_acc=m["val_accuracy"], dense_bytes=m["dense_bytes"])
            else:
                row.update(acc=m["compressed_val_accuracy"], model_bytes=m["model_bytes"],
                           onnx_bytes=m["onnx_bytes"], onnx_acc=m["onnx_val_accuracy"],
                           onnx_agreement=m["onnx_agreement"], sparsity=m["sparsity"])
        row["ratio"] = row["dense_bytes"] / row["model_bytes"]
        row["onnx_ratio"] = row["dense_bytes"] / row["onnx_bytes"]
        row["drop_points"] = (row["dense_acc"] - row["acc"]) * 100
        rows.append(row)
        print(common.table([row], list(row)), flush=True)

    def spread(key):
        vals = [r[key] for r in rows]
        return {"mean": statistics.mean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}

    summary = {k: spread(k) for k in ("dense_acc", "acc", "onnx_acc", "drop_points", "ratio",
                                      "onnx_ratio", "onnx_agreement", "model_bytes", "onnx_bytes")}
    return rows, summary


# ------------------------------------------------------------------ part 2: latency
def latency_specs(epochs: int) -> dict:
    from dlopt import Data, Experiment, Model, Optimizer, Prune, Quantize

    def spec(name, model, compression):
        return Experiment(name=name, seed=0, epochs=epochs,
                          data=Data(dataset="digits", batch_size=64), model=model,
                          optimizer=Optimizer(name="adam", lr=1e-3), compression=compression)

    prune = Prune(scope="layer", structured=True, sparsity=0.75, schedule="one_shot",
                  start_epoch=max(epochs - 1, 0))
    nets = {"lenet300 MLP 64-300-100-10": (Model(hidden=[300, 100]), "dynamic"),
            "wide MLP 64-1024-1024-10": (Model(hidden=[1024, 1024]), "dynamic"),
            "cnn 32-64-128 conv + 128": (Model(arch="cnn"), "static")}
    out = {}
    for net, (model, method) in nets.items():
        q = Quantize(method=method, calibration_batches=4)
        out[net] = {"dense": spec("dense", model, []), "int8": spec("int8", model, [q]),
                    "pruned": spec("pruned", model, [prune]),
                    "pruned+int8": spec("pruned-int8", model, [prune, q])}
        if method == "static":  # ONNX Runtime's dynamic ConvInteger, for comparison
            out[net]["int8 (dynamic)"] = spec("int8-dynamic", model, [Quantize(method="dynamic")])
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_variants(callables: dict, repeats: int) -> dict:
    """Interleaved: each round calls every variant once, so load drifts hit all alike."""
    for f in callables.values():
        for _ in range(5):
            f()
    samples = {k: [] for k in callables}
    for _ in range(repeats):
        for k, f in callables.items():
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return {k: median_ms(v) for k, v in samples.items()}


def latency(epochs: int, repeats: int, work: Path) -> list[dict]:
    import torch
    from dlopt.artifact.files import build_from_dir
    from dlopt.ml import onnx_int8, shrink

    torch.set_num_threads(1)
    rows = []
    for net, specs in latency_specs(epochs).items():
        runs = {}
        for variant, spec in specs.items():
            metrics, saved = train(spec, work)
            runs[variant] = (metrics, saved)
        x = {b: torch.randn(b, 64) for b in (1, 256)}
        fns, info = {}, {}
        for variant, (metrics, saved) in runs.items():
            model = build_from_dir(saved)
            info[variant] = {"param_count": sum(p.numel() for p in model.parameters()),
                             "flops": shrink.flops(model, x[1]),
                "accuracy": metrics.get("onnx_val_accuracy", metrics["compressed_val_accuracy"]),
                "bytes": metrics.get("onnx_bytes", metrics["model_bytes"])}
            onnx = saved / onnx_int8.FILE
            for b, xb in x.items():
                if onnx.exists():
                    sess, xn = onnx_int8.session(onnx, threads=1), xb.numpy()
                    fns[(variant, b)] = lambda s=sess, v=xn: s.run(None, {onnx_int8.INPUT: v})
                else:
                    def run(m=model, v=xb):
                        with torch.no_grad():
                            m(v)
                    fns[(variant, b)] = run
            if variant == "dense":  # ONNX Runtime fp32 of the same dense model, for reference
                fp32 = onnx_int8.export(model, x[1])
                sess = onnx_int8.session(fp32, threads=1)
                for b, xb in x.items():
                    fns[("dense fp32 (onnxruntime)", b)] = partial(
                        sess.run, None, {onnx_int8.INPUT: xb.numpy()})
                info["dense fp32 (onnxruntime)"] = {**info["dense"], "bytes": len(fp32)}
        ms = time_variants(fns, repeats)
        base = {b: ms.get(("dense", b)) for b in (1, 256)}
        for variant in info:
            row = {"net": net, "variant": variant, **info[variant]}
            for b in (1, 256):
                row[f"b{b}_ms"] = ms[(variant, b)]
                if base[b]:
                    row[f"speedup_b{b}"] = base[b] / ms[(variant, b)]
            rows.append(row)
        print(common.table([r for r in rows if r["net"] == net], list(rows[-1])), flush=True)
    return rows


# ------------------------------------------------------------------ part 3: weight sharing
def digits_as_mnist(root: Path) -> Path:
    """No MNIST here: sklearn's 8x8 digits upsampled (bilinear) to 28x28, 0..255, written as
    MNIST's IDX files under root/MNIST/raw (1,437 train / 360 test rows), read back by
    dlopt's own IDX reader: 784 inputs of real handwritten digits."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.nn.functional.interpolate(torch.from_numpy(bunch.images).float()[:, None],
                                        size=(28, 28), mode="bilinear", align_corners=True)
    x = (x[:, 0] * 255 / 16).round().clamp(0, 255).numpy().astype(np.uint8)
    y = bunch.target.astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    def idx(path, a):
        head = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes()
        (raw / path).write_bytes(head + a.tobytes())
    n = 1437
    idx("train-images-idx3-ubyte", x[:n])
    idx("train-labels-idx1-ubyte", y[:n])
    idx("t10k-images-idx3-ubyte", x[n:])
    idx("t10k-labels-idx1-ubyte", y[n:])
    return root


def sharing_spec(seed: int, compressed: bool, bits: int, mnist_root: str, epochs: int,
                 allocation: str = "uniform"):
    from dlopt import Data, Experiment, Model, Optimizer, Prune, Schedule, Share

    data = Data(dataset="mnist", root=mnist_root, batch_size=64, val_fraction=0.2)
    prune_end = epochs - 8
    scope = "global" if allocation == "uniform" else "layer"  # sensitivity: one level per layer
    compression = [Prune(scope=scope, sparsity=0.95, schedule="gradual", start_epoch=2,
                         end_epoch=prune_end, frequency=10, allocation=allocation),
                   Share(bits=bits, finetune_epochs=4)] if compressed else []
    return Experiment(name="bench-share", seed=seed, epochs=epochs, data=data,
                      model=Model(hidden=[300, 100], init="kaiming_uniform"),
                      optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
                      schedule=Schedule(name="cosine"), compression=compression)


def sharing_seeds(args, work: Path) -> None:
    rows = []
    root = args.mnist_root or str(digits_as_mnist(work / "digits28"))
    for seed in range(args.seeds):
        d, _ = train(sharing_spec(seed, False, args.bits, root, args.epochs), work)
        c, _ = train(sharing_spec(seed, True, args.bits, root, args.epochs, args.allocation),
                     work)
        row = {"seed": seed, "dense_acc": d["val_accuracy"], "acc": c["compressed_val_accuracy"],
               "pruned_acc": c["prune_val_accuracy"], "sparsity": c["sparsity"],
               "dense_bytes": c["dense_bytes"], "pruned_bytes": c["prune_model_bytes"],
               "model_bytes": c["model_bytes"]}
        if args.allocation == "sensitivity":  # the chosen per-layer sparsities, in layer order
            row["layer_sparsity"] = "/".join(f"{v:g}" for k, v in c.items()
                                             if k.startswith("prune_sparsity."))
        row["ratio"] = row["dense_bytes"] / row["model_bytes"]
        row["drop_points"] = (row["dense_acc"] - row["acc"]) * 100
        rows.append(row)
        print(common.table([row], list(row)), flush=True)
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("ratio", "drop_points", "acc",
                                                            "dense_acc", "model_bytes")}
    std = {k: statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0
           for k in ("ratio", "drop_points")}
    data = (f"MNIST IDX files under {args.mnist_root}" if args.mnist_root else
            "no MNIST on this machine: sklearn's digits upsampled to 28x28 and written as "
            "MNIST IDX files (1,437 train rows, of which 20% validation; accuracy on those "
            f"{round(0.2 * 1437)} validation rows, so one row is "
            f"{100 / round(0.2 * 1437):.2f} points)")
    md = (f"LeNet-300-100 (784-300-100-10), {args.epochs} epochs, {len(rows)} seeds; data: "
          f"{data}. Compressed: gradual pruning to 95% (allocation '{args.allocation}'; "
          f"epochs 2-{args.epochs - 8}), "
          f"then k-means weight sharing, {args.bits} bits, centroids fine-tuned the last 4 "
          "epochs; bytes: the saved compact artifact (codebook + zlib/LZMA-coded indices).\n\n"
          + common.table(rows, list(rows[0])) + "\n\n"
          f"- size: {mean['ratio']:.1f} +- {std['ratio']:.1f}x (target {TARGET_SIZE}x): "
          f"{'met' if mean['ratio'] >= TARGET_SIZE else 'not met'}\n"
          f"- accuracy drop: {mean['drop_points']:.2f} +- {std['drop_points']:.2f} points "
          f"(target <= {TARGET_DROP_POINTS}): "
          f"{'met' if mean['drop_points'] <= TARGET_DROP_POINTS else 'not met'}\n")
    common.write("compression_sharing", "Compression: weight sharing on LeNet-300-100",
                 {"seeds": rows, "mean": mean, "std": std, "data": data, "args": vars(args)}, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--latency-epochs", type=int, default=3)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--sharing", action="store_true", help="part 3 only")
    ap.add_argument("--resnet", action="store_true",
                    help="resnet, 50%% channels removed vs dense (benchmarks/compression_resnet.py)")
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--mnist-root", default=None)
    ap.add_argument("--allocation", choices=["uniform", "sensitivity"], default="uniform",
                    help="--sharing: Prune's per-layer allocation (uniform = one global ranking)")
    args = ap.parse_args()
    import os

    if args.resnet:
        import compression_resnet

        with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as d:
            compression_resnet.run(args, Path(d), train, time_variants)
        return
    if args.sharing:
        with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as d:
            sharing_seeds(args, Path(d))
        return

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as d:
        work = Path(d)
        lat = latency(args.latency_epochs, args.repeats, work)
        seeds, summary = ([], {}) if args.latency_only else recipe_seeds(args.seeds, work)
    load_end = os.getloadavg()
    lat_cols = ["net", "variant", "param_count", "flops", "bytes", "accuracy", "b1_ms", "b256_ms",
                "speedup_b1", "speedup_b256"]
    md = ("Latency: one thread for PyTorch and ONNX Runtime, median of "
          f"{args.repeats} interleaved calls, random inputs; models trained "
          f"{args.latency_epochs} epochs on digits by `fit` and rebuilt from their saved "
          "artifact (int8 rows: the artifact's `model.onnx`, run by ONNX Runtime). pruned: "
          "structured 75% (layer scope, L1 rows), units removed. speedup: dense fp32 PyTorch "
          "time / this row's, same batch. Load average at start "
          f"{load_start[0]:.1f}, at end {load_end[0]:.1f} (a shared 2-core machine).\n\n"
          + common.table(lat, lat_cols) + "\n")
    verdicts = []
    for r in lat:
        if r["variant"] in ("int8", "pruned", "pruned+int8"):
            verdicts.append(f"- {r['net']}, {r['variant']}: {r['speedup_b256']:.2f}x at batch 256 "
                            f"(target >= {TARGET_SPEEDUP}x): "
                            f"{'met' if r['speedup_b256'] >= TARGET_SPEEDUP else 'not met'}")
    md += "\n" + "\n".join(verdicts) + "\n"
    if seeds:
        cols = ["seed", "dense_acc", "acc", "onnx_acc", "drop_points", "dense_bytes",
                "model_bytes", "ratio", "onnx_bytes", "onnx_ratio", "onnx_agreement", "sparsity"]
        s = summary
        md += (f"\nSize and accuracy: the shipped recipe `{RECIPE.relative_to(ROOT)}` vs the same "
               f"spec dense, {args.seeds} seeds (mean +- sample std):\n\n"
               + common.table(seeds, cols) + "\n\n"
               f"- size: {s['ratio']['mean']:.1f}x (PyTorch compact weights), "
               f"{s['onnx_ratio']['mean']:.1f}x (int8 ONNX served); target {TARGET_SIZE}x\n"
               f"- accuracy drop: {s['drop_points']['mean']:.2f} +- {s['drop_points']['std']:.2f} "
               f"points (target <= {TARGET_DROP_POINTS}); dense {s['dense_acc']['mean']:.4f} +- "
               f"{s['dense_acc']['std']:.4f}, compressed {s['acc']['mean']:.4f} +- "
               f"{s['acc']['std']:.4f}, ONNX int8 {s['onnx_acc']['mean']:.4f}\n"
               f"- ONNX agreement with PyTorch: {s['onnx_agreement']['mean']:.4f}\n")
    common.write("compression", "Compression", {"latency": lat, "seeds": seeds,
                                                 "summary": summary, "args": vars(args),
                                                 "load_start": load_start, "load_end": load_end},
                 md)


if __name__ == "__main__":
    main()
