"""`python benchmarks/compression.py --resnet`: the built-in `resnet` with 50% of the channels
of every dependency group removed (Prune(structured=True), dlopt.ml.residual) vs dense.

Data: sklearn's digits (8x8, one channel; not upsampled), trained by `dlopt.train.loop.fit`
in this process for `--epochs` epochs; the pruned model is the dense recipe with masks per
dependency group raised by the gradual schedule from epoch 1 to epoch `epochs - 2` (the last
two epochs fine-tune the masked structure, dlopt.stages.pruning.groups) and the masked
channels cut at fit_end; both rebuilt from their saved artifacts.
FLOPs: torch.utils.flop_counter.FlopCounterMode, one sample. Latency: batch 256, one thread
(PyTorch and ONNX Runtime fp32), median of `--repeats` interleaved calls."""
from __future__ import annotations

import io
import statistics
from pathlib import Path

import common


def specs(seed: int, epochs: int):
    from dlopt import Data, Experiment, Model, Optimizer, Prune

    base = dict(seed=seed, epochs=epochs, model=Model(arch="resnet"),
                data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
                optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9))
    return {"dense": Experiment(name="resnet-dense", **base),
            "pruned50": Experiment(name="resnet-pruned", compression=[Prune(
                sparsity=0.5, scope="layer", structured=True, schedule="gradual",
                start_epoch=min(1, epochs - 1), end_epoch=max(epochs - 2, min(1, epochs - 1)),
                frequency=5)], **base)}


def flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return counter.get_total_flops()


def ort_session(model, x):
    import onnxruntime as ort
    import torch

    buf = io.BytesIO()
    torch.onnx.export(model, (x[:1],), buf, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def run(args, work: Path, train, time_variants) -> None:
    import torch
    from dlopt.artifact.files import build_from_dir

    torch.set_num_threads(1)
    x = torch.randn(256, 64)
    rows = []
    for seed in range(args.seeds):
        info, fns = {}, {}
        for variant, spec in specs(seed, args.epochs).items():
            metrics, saved = train(spec, work)
            model = build_from_dir(saved).eval()
            acc = metrics.get("compressed_val_accuracy", metrics.get("val_accuracy"))
            info[variant] = {"seed": seed, "variant": variant, "val_accuracy": acc,
                             "param_count": sum(p.numel() for p in model.parameters()),
                             "weights_bytes": (saved / "model.safetensors").stat().st_size
                             if (saved / "model.safetensors").exists() else None,
                             "flops": flops(model, x)}

            def torch_run(m=model):
                with torch.no_grad():
                    m(x)
            sess = ort_session(model, x)
            fns[(variant, "torch")] = torch_run
            fns[(variant, "ort")] = lambda s=sess: s.run(None, {"x": x.numpy()})
        ms = time_variants(fns, args.repeats)
        for variant, row in info.items():
            row["b256_torch_ms"], row["b256_ort_ms"] = ms[(variant, "torch")], ms[(variant, "ort")]
            for k in ("flops", "param_count", "b256_torch_ms", "b256_ort_ms"):
                row[f"{k}_vs_dense"] = row[k] / info["dense"][k]
            rows.append(row)
        print(common.table(rows[-2:], list(rows[-1])), flush=True)
    drops = [100 * (d["val_accuracy"] - p["val_accuracy"]) for d, p in zip(rows[::2], rows[1::2])]
    summary = {"seeds": args.seeds, "drop_points_mean": statistics.mean(drops),
               "drop_points_std": statistics.stdev(drops) if len(drops) > 1 else None}
    md = (f"resnet (ResNet-8, digits 8x8) dense vs 50% channels removed by dependency group, "
          f"{args.seeds} seed(s), {args.epochs} epochs; batch 256, one thread, median of "
          f"{args.repeats} interleaved calls.\n\n" + common.table(rows, list(rows[0])) + "\n\n"
          f"- accuracy drop (points): {summary}\n")
    common.write("compression-resnet", "Compression: resnet structured 50%",
                 {"rows": rows, "summary": summary, "args": vars(args)}, md)
