"""Augmentation (dlopt.stages.augment): does it regularize, and what does it cost per epoch?

Regularization: digits as 8x8 images, the `cnn` model, trained on a small training split
(20% of digits: ~360 rows, so the model can overfit) for N epochs with the plain loop
(`dlopt.train.loop.fit`, no Ray) under several augmentations, a few seeds each. After
training, accuracy and loss on the *clean* training split (no augmentation) and on the
validation split; the train/val gap is clean-train minus validation.

Epoch time (`--epoch-time`): the per-epoch figure of benchmarks/overhead.py (its bare loop:
digits, 64-512-10 MLP, Adam, one torch thread, seconds per epoch fitted over N epochs), with
augmentation off, for the code before augmentation existed (`--before DIR`, an export of the
earlier commit's `platform/`, e.g. `git archive a781680 platform | tar -x -C /tmp/before`) and
for this tree, each in its own process, interleaved `--repeats` times: the ratio of medians is
from one run. The same loop with crop+flip+mixup on is timed alongside.

    python benchmarks/augmentation.py [--seeds 3] [--epochs 30]
    python benchmarks/augmentation.py --epoch-time --before /tmp/before/platform [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ARMS = {
    "none": {},
    "crop 1": {"crop_padding": 1},
    "crop 1 + mixup 0.2": {"crop_padding": 1, "mixup_alpha": 0.2},
    "crop 1 + cutmix 1.0": {"crop_padding": 1, "cutmix_alpha": 1.0},
    "crop 1 + flip": {"crop_padding": 1, "flip": True},
}


def train_once(arm: dict, seed: int, epochs: int) -> dict:
    import torch

    from dlopt import Augment, Data, Experiment, Model, Optimizer, Regularization
    from dlopt.train.loop import fit
    from dlopt.train.steps import evaluate

    torch.set_num_threads(1)
    spec = Experiment(name="bench-augment", seed=seed, epochs=epochs,
                      data=Data(dataset="digits", batch_size=32, val_fraction=0.6,
                                test_fraction=0.2),
                      model=Model(arch="cnn"), optimizer=Optimizer(name="adam", lr=2e-3),
                      regularization=Regularization(augment=Augment(**arm) if arm else None))
    state = fit(spec, lambda m, w=None: None)
    d = state.datasets
    train = evaluate(state.model, d.train, d.task, prefix="train_")
    val = evaluate(state.model, d.val, d.task)
    return {"train_accuracy": train["train_accuracy"], "train_loss": train["train_loss"],
            "val_accuracy": val["val_accuracy"], "val_loss": val["val_loss"],
            "gap": train["train_accuracy"] - val["val_accuracy"], "train_rows": len(d.train)}


def regularization(seeds: int, epochs: int) -> tuple[list[dict], list[dict]]:
    runs, rows = [], []
    for name, arm in ARMS.items():
        per_seed = [train_once(arm, s, epochs) for s in range(seeds)]
        runs += [{"arm": name, "seed": s, **r} for s, r in enumerate(per_seed)]

        row = {"augmentation": name}
        for key in ("train_accuracy", "val_accuracy", "gap", "val_loss"):
            vals = [r[key] for r in per_seed]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[key] = f"{statistics.mean(vals):.4f} +- {sd:.4f}"
        rows.append(row)
        print(row, flush=True)
    return runs, rows


EPOCH_CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import overhead
spec = overhead.make_spec(int(sys.argv[2]), 1)
if sys.argv[3] == "on":
    from dlopt import Augment, Regularization
    spec = spec.model_copy(update={"regularization": Regularization(
        augment=Augment(crop_padding=1, flip=True, mixup_alpha=0.2))})
out = overhead.bare(spec)
import dlopt
print(json.dumps({"epoch_s": out["epoch_s"], "compute_s": out["compute_s"],
                  "dlopt": dlopt.__file__}))
"""


def epoch_time(before: str, epochs: int, repeats: int) -> tuple[dict, list[dict]]:
    here = str(common.ROOT / "platform")
    sides = [("before (augmentation absent)", before, "off"), ("after, augmentation off", here, "off"),
             ("after, crop 1 + flip + mixup 0.2", here, "on")]
    got: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    for _ in range(repeats):  # interleaved: load drifts hit every side alike
        for name, path, aug in sides:
            env = {**os.environ, "PYTHONPATH": path}
            out = subprocess.run([sys.executable, "-c", EPOCH_CODE, str(Path(__file__).parent),
                                  str(epochs), aug], env=env, capture_output=True, text=True,
                                 check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["dlopt"].startswith(path), result  # the code we meant to time
            got[name].append(result)
            print(name, result, flush=True)
    rows = [{"side": name, "epoch_ms_median": 1000 * statistics.median(r["epoch_s"] for r in rs),
             "compute_ms_median": 1000 * statistics.median(r["compute_s"] for r in rs),
             "runs_ms": ", ".join(f"{1000 * r['epoch_s']:.2f}" for r in rs)}
            for name, rs in got.items()]
    base = rows[0]["epoch_ms_median"]
    for r in rows:
        r["ratio_to_before"] = r["epoch_ms_median"] / base
    return got, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--epoch-time", action="store_true")
    ap.add_argument("--before", help="an export of the earlier commit's platform/ folder")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.epoch_time:
        if not args.before:
            ap.error("--epoch-time needs --before DIR")
        runs, rows = epoch_time(args.before, args.epochs, args.repeats)
        md = common.table(rows, ["side", "epoch_ms_median", "compute_ms_median",
                                 "ratio_to_before", "runs_ms"])
        common.write("augmentation_epoch_time", "Per-epoch time, augmentation off: before/after",
                     {"epochs": args.epochs, "repeats": args.repeats, "before": args.before,
                      "runs": runs, "rows": rows}, md)
        return
    runs, rows = regularization(args.seeds, args.epochs)
    md = common.table(rows, ["augmentation", "train_accuracy", "val_accuracy", "gap", "val_loss"])
    common.write("augmentation", "Augmentation as regularization (digits cnn, 20% train)",
                 {"seeds": args.seeds, "epochs": args.epochs, "arms": ARMS, "runs": runs,
                  "rows": rows}, md)


if __name__ == "__main__":
    main()
