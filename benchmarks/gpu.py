"""GPU acceptance: every strategy, precision and compression path of dlopt on the GPUs found.

One command, under 5 minutes on one GPU; uses every GPU it finds (N = torch.cuda.device_count()):
- DDP on 1 and N GPUs; FSDP and pipeline on N (dlopt needs 2+ workers for both, and NCCL one
  GPU per rank: with 1 GPU they are reported "not run");
- fp32, bf16-mixed, and 16-mixed with a worker killed after epoch 2 and restarted from its
  checkpoint (the GradScaler state must come back with it: growth tracker / scale compared);
- structured pruning + static int8 + distillation from a teacher registered by the fp32 run;
- fractional trials, 4 per GPU (`resources.gpus_per_worker=0.25`): the peak number running
  at once (from Tune's own timestamps) must reach 4 x N;
- samples/s of dlopt's 1-GPU trial against a plain PyTorch loop written below (not dlopt's
  `fit`), same data, model, optimizer and batch; 2+-GPU DDP scaling against 1 GPU;
- an image folder (4,000 PNGs written by the script) streamed to the GPU by each rank's own
  DataLoader (dlopt.ml.rank_loader: pinned batches, crop + flip on the GPU, bf16) on 1 GPU, and
  sharded over N GPUs under NCCL;
- peak nvidia-smi memory per GPU (one rank per GPU) for each case.
Targets (issue 26): dlopt >= 0.95x the plain loop on 1 GPU; 2-GPU DDP >= 1.8x 1 GPU.
Synthetic classification data (n x 256, 10 classes), MLP 256-1024-1024-10, batch 1024, Adam.
Writes benchmarks/results/gpu-*.json and .md. Exits 1 with a message without CUDA.

    python benchmarks/gpu.py                     # on a GPU machine
    python benchmarks/gpu.py --dry-run --gpus 4  # no CUDA needed: builds, validates, plans every spec
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

FEATURES, CLASSES, BATCH, HIDDEN = 256, 10, 1024, [1024, 1024]
TEACHER = "gpu-accept-teacher"
KILL_EPOCH = 2
IMAGES, VAL_IMAGES = 4000, 200
IMAGE_ROOT = "images"  # under the run's temporary folder; a placeholder path in --dry-run


# ------------------------------------------------------------------ the specs
def spec(name: str, samples: int, epochs: int, *, precision: str = "32", workers: int = 1,
         strategy: str = "ddp", gpus_per_worker=None, trials: int = 1, compression=(),
         register: bool = False, max_failures: int = 0, hidden=None, cpus: float = 1.0):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking

    return Experiment(
        name=f"gpu-{name}", seed=0, epochs=epochs, precision=precision,
        data=Data(dataset="synthetic", n_samples=samples, n_features=FEATURES,
                  n_classes=CLASSES, batch_size=BATCH),
        model=Model(arch="mlp", hidden=list(hidden or HIDDEN)),
        optimizer=Optimizer(name="adam", lr=1e-3),
        compression=list(compression),
        search=Search(num_samples=trials,
                      metric="compressed_val_accuracy" if compression else "val_accuracy"),
        resources=Resources(num_workers=workers, use_gpu=True, strategy=strategy,
                            gpus_per_worker=gpus_per_worker, max_failures=max_failures,
                            cpus_per_worker=cpus),
        tracking=Tracking(experiment="gpu-acceptance", report_every=1,
                          register_as=TEACHER if register else None),
    )


def image_spec(root: str, epochs: int, workers: int = 1):
    """A streamed image folder on the GPU: the rank loader, crop + flip, bf16, a cnn."""
    from dlopt import Augment, Data, Experiment, Model, Optimizer, Regularization, Resources
    from dlopt import Search
    from dlopt.spec import Source

    return Experiment(
        name=f"gpu-images{workers}", seed=0, epochs=epochs, precision="bf16-mixed",
        data=Data(batch_size=256, source=Source(format="images", path=root)),
        model=Model(arch="cnn"), optimizer=Optimizer(name="adam", lr=1e-3),
        regularization=Regularization(augment=Augment(crop_padding=4, flip=True)),
        search=Search(num_samples=1),
        resources=Resources(num_workers=workers, use_gpu=True, cpus_per_worker=2,
                            max_failures=0))


def specs(gpus: int, samples: int = 200_000, epochs: int = 4,
          image_root: str = IMAGE_ROOT) -> tuple[dict, dict]:
    """(name -> spec for every case that runs on `gpus` GPUs, name -> why a case does not)."""
    from dlopt import Distill, Prune, Quantize

    out = {
        "ddp-1gpu-fp32": spec("ddp1-fp32", samples, epochs, register=True),
        "ddp-1gpu-bf16": spec("ddp1-bf16", samples, epochs, precision="bf16-mixed"),
        "ddp-1gpu-fp16-restart": spec("fp16-restart", samples, KILL_EPOCH + 1,
                                      precision="16-mixed", max_failures=1),
        "compress-1gpu": spec("compress", samples // 4, 3, compression=[
            Distill(teacher=f"models:/{TEACHER}@champion", temperature=2.0, alpha=0.7),
            Prune(scope="layer", structured=True, sparsity=0.5, start_epoch=1),
            Quantize(method="static", calibration_batches=4)]),
        # a quarter CPU each too: 4 x N trials fit the CPUs of any machine with N GPUs
        "fractional-4-per-gpu": spec("fractional", samples // 10, 3, gpus_per_worker=0.25,
                                     cpus=0.25, trials=4 * gpus),
        "images-1gpu-rank-loader": image_spec(image_root, epochs),
    }
    skipped = {}
    if gpus >= 2:
        for strategy in ("ddp", "fsdp", "pipeline"):
            # a pipeline rank holds whole layers: as many Linear layers as GPUs
            hidden = [HIDDEN[0]] * max(len(HIDDEN), gpus - 1) if strategy == "pipeline" else None
            out[f"{strategy}-{gpus}gpu"] = spec(f"{strategy}{gpus}", samples, epochs,
                                                workers=gpus, strategy=strategy, hidden=hidden)
        out[f"images-{gpus}gpu-rank-loader"] = image_spec(image_root, epochs, workers=gpus)
    else:
        for strategy in ("ddp", "fsdp", "pipeline"):
            skipped[f"{strategy}-Ngpu"] = ("not run: 1 GPU found (N-GPU cases need 2+; NCCL "
                                           "puts one rank per GPU)")
    return out, skipped


def dry_run(gpus: int, samples: int, epochs: int) -> int:
    """Build, validate and plan every spec for `gpus` GPUs; no CUDA, no Ray, no MLflow."""
    from dlopt.driver.preflight import placement_problems
    from dlopt.spec.plan import make_plan

    cases, skipped = specs(gpus, samples, epochs)
    rows, problems = [], []
    for name, s in cases.items():
        plan = make_plan(s, cluster_cpus=16, cluster_gpus=gpus)
        problems += [f"{name}: {p}" for p in placement_problems(s, {"CPU": 16, "GPU": gpus}, "it")]
        rows.append({"case": name, "strategy": s.resources.strategy,
                     "workers": s.resources.num_workers, "precision": s.precision,
                     "GPUs/trial": plan.resources_per_trial.get("GPU"), "trials": plan.trials,
                     "concurrency": plan.max_concurrent_trials})
    rows += [{"case": k, "strategy": v} for k, v in skipped.items()]
    print(common.table(rows, ["case", "strategy", "workers", "precision", "GPUs/trial",
                              "trials", "concurrency"]))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


# ------------------------------------------------------------------ the plain PyTorch loop
def plain_loop(samples: int, epochs: int, precision: str) -> float:
    """Samples/s of the loop a PyTorch user writes: same data size, model, Adam, batch; each
    epoch trains on shuffled batches copied from host memory and then evaluates, like dlopt's
    `epoch_seconds`. Median over the epochs after the first (warm-up)."""
    import torch
    from torch import nn

    dev = torch.device("cuda")
    n_train = round(samples * 0.6)
    n_val = round(samples * 0.2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, FEATURES, generator=g).pin_memory()
    y = torch.randint(0, CLASSES, (n_train + n_val,), generator=g).pin_memory()
    layers, width = [], FEATURES
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, CLASSES)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    seconds = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(n_train).split(BATCH):
            xb, yb = x[idx].to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x[i:i + 4096].to(dev)).argmax(1) == y[i:i + 4096].to(dev)).sum()
                          for i in range(n_train, n_train + n_val, 4096))
        float(correct)  # one sync, as the epoch's metrics are
        seconds.append(time.perf_counter() - t0)
    return n_train / statistics.median(seconds[1:] or seconds)


# ------------------------------------------------------------------ measuring a sweep
class GpuMemory:
    """Peak `nvidia-smi` memory.used (MiB) per GPU while the block runs (one rank per GPU)."""

    def __init__(self, period_s: float = 0.25):
        self.period_s, self.peak, self._stop = period_s, {}, threading.Event()

    def poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                i, used = (int(v) for v in line.split(","))
                self.peak[i] = max(self.peak.get(i, 0), used)
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self.poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextmanager
def environ(**values: str):
    """Set variables for one sweep (the test-only fault hooks, dlopt.train.faults)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def run_case(s, work: Path, name: str, **env: str) -> dict:
    """One sweep of `s`: its trials' metrics, peak memory per GPU, and wall time. Every case
    shares one MLflow store (the compression case distills from the fp32 case's model)."""
    from mlflow.tracking import MlflowClient

    from dlopt.driver.sweep import run

    uri = f"sqlite:///{work}/mlflow.db"
    storage = work / name / "ray_results"
    t0 = time.perf_counter()
    with GpuMemory() as memory, environ(**env):
        result = run(s, tracking_uri=uri, storage=str(storage), progress=False)
    client = MlflowClient(uri)
    seconds = [[m.value for m in sorted(client.get_metric_history(t.run_id, "epoch_seconds"),
                                        key=lambda m: m.step)] for t in result.trials if t.run_id]
    if s.data.source is not None:  # an image folder: its train/ images
        train_n = len(list((Path(s.data.source.path) / "train").glob("*/*.png")))
    else:
        train_n = round(s.data.n_samples * (1 - s.data.val_fraction - s.data.test_fraction))
    return {"status": [t.status for t in result.trials], "trials": len(result.trials),
            "samples_per_s": train_n / statistics.median((seconds[0][1:] or seconds[0]))
            if seconds and seconds[0] else None,
            "peak_mib_per_gpu": memory.peak, "wall_s": time.perf_counter() - t0,
            "metrics": result.best.metrics if result.best else {},
            "peak_running": peak_running(result.result_grid), "storage": storage}


def peak_running(grid) -> int:
    """How many trials ran at once at the busiest moment (Tune's timestamps of each trial)."""
    spans = []
    for r in grid or []:
        m = r.metrics or {}
        if "timestamp" in m and "time_total_s" in m:
            spans.append((m["timestamp"] - m["time_total_s"], m["timestamp"]))
    return max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)


def scaler_survived(storage: Path, steps_per_epoch: int) -> dict:
    """The fp16 restart: the GradScaler state in the checkpoint of epoch KILL_EPOCH + 1, the
    epoch trained after the restart (Tune keeps the newest checkpoints only). A scaler
    restored from epoch KILL_EPOCH's checkpoint goes on counting steps without overflow, so
    its growth tracker exceeds one epoch's steps (growth_interval 2000 > the run's steps);
    a fresh one counts from 0 and cannot. An overflow in the restarted epoch also resets the
    count: then the verdict says so (rerun)."""
    from dlopt.train.checkpoint import CHECKPOINT_FILE, load_checkpoint

    found = {}
    for f in storage.rglob(CHECKPOINT_FILE):
        c = load_checkpoint(f.parent)
        found[c.epoch] = c.scaler
    after = found.get(KILL_EPOCH + 1)
    out = {"epochs_found": sorted(found), "after_restart": after,
           "steps_per_epoch": steps_per_epoch}
    if not after:
        return {**out, "verdict": "fail: no GradScaler state in the checkpoint"}
    if after.get("_growth_tracker", 0) > steps_per_epoch:
        return {**out, "verdict": "pass"}
    return {**out, "verdict": "fail: growth tracker within one epoch's steps: the scaler "
            "restarted from its defaults (or an overflow after the restart reset it: rerun)"}


# ------------------------------------------------------------------ the run
def run_all(gpus: int, samples: int, epochs: int) -> tuple[list[dict], dict]:
    from streaming_throughput import write_folder

    rows, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="dlopt-gpu-") as tmp:
        work = Path(tmp)
        write_folder(work / IMAGE_ROOT / "train", IMAGES)
        write_folder(work / IMAGE_ROOT / "val", VAL_IMAGES, seed=1)
        cases, skipped = specs(gpus, samples, epochs, image_root=str(work / IMAGE_ROOT))
        for name, s in cases.items():
            env = {}
            if name == "ddp-1gpu-fp16-restart":
                env = {"DLOPT_FAULT_KILL_AT_EPOCH": f"{KILL_EPOCH}:{work}/killed"}
            elif name.startswith("fractional"):
                env = {"DLOPT_FAULT_EPOCH_DELAY_S": "2"}  # trials long enough to overlap
            try:
                r = run_case(s, work, name, **env)
            except Exception as err:  # noqa: BLE001 - one failed case is reported, not fatal
                rows.append({"case": name, "status": f"error: {type(err).__name__}: {err}"[:200]})
                continue
            if name == "ddp-1gpu-fp16-restart":
                steps = math.ceil(s.data.n_samples * 0.6 / BATCH)
                extra["fp16_restart"] = scaler_survived(r["storage"], steps)
                extra["fp16_restart"]["resumed"] = Path(f"{work}/killed.resumed").exists()
            rows.append({"case": name, "status": ",".join(r["status"]), "trials": r["trials"],
                         "samples_per_s": r["samples_per_s"], "peak_running": r["peak_running"],
                         "peak_mib_per_gpu": r["peak_mib_per_gpu"], "wall_s": r["wall_s"],
                         **{k: v for k, v in r["metrics"].items() if k in (
                             "val_accuracy", "compressed_val_accuracy", "param_count",
                             "dense_param_count", "latency_ms", "distill_teacher_agreement")}})
    rows += [{"case": k, "status": v} for k, v in skipped.items()]
    return rows, extra


def verdicts(rows: list[dict], plain: dict, gpus: int, extra: dict) -> dict:
    by = {r["case"]: r for r in rows}
    out = {}
    one = by.get("ddp-1gpu-fp32", {}).get("samples_per_s")
    if one:
        out["vs_plain_fp32"] = one / plain["32"]
        bf16 = by.get("ddp-1gpu-bf16", {}).get("samples_per_s")
        out["vs_plain_bf16"] = bf16 / plain["bf16-mixed"] if bf16 else None
        many = by.get(f"ddp-{gpus}gpu", {}).get("samples_per_s")
        out[f"ddp_scaling_{gpus}gpu"] = many / one if many else "not run (1 GPU)"
    out["fractional_peak_running"] = by.get("fractional-4-per-gpu", {}).get("peak_running")
    out["fractional_expected"] = 4 * gpus
    out["fp16_restart"] = extra.get("fp16_restart", {}).get("verdict")
    out["all_ok"] = all(set(str(r.get("status")).split(",")) == {"ok"}
                        or str(r.get("status")).startswith("not run") for r in rows)
    scaling = out.get("ddp_scaling_2gpu")
    out["targets"] = {"vs_plain_fp32 >= 0.95": (out.get("vs_plain_fp32") or 0) >= 0.95,
                      "ddp_scaling >= 1.8 (2 GPUs)": (
                          isinstance(scaling, float) and scaling >= 1.8) if gpus == 2 else "n/a"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="build, validate and plan every spec; needs no CUDA")
    ap.add_argument("--gpus", type=int, default=2, help="GPUs to plan for with --dry-run")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run(args.gpus, args.samples, args.epochs)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU acceptance script needs a GPU machine "
              "(`--dry-run` checks its specs without one)", file=sys.stderr)
        return 1
    gpus = torch.cuda.device_count()
    t0 = time.perf_counter()
    plain = {p: plain_loop(args.samples, args.epochs, p) for p in ("32", "bf16-mixed")}
    rows, extra = run_all(gpus, args.samples, args.epochs)
    summary = verdicts(rows, plain, gpus, extra)
    summary["wall_s"] = time.perf_counter() - t0
    text = common.table(rows, ["case", "status", "trials", "samples_per_s", "peak_running",
                               "peak_mib_per_gpu", "wall_s", "val_accuracy",
                               "compressed_val_accuracy"])
    print(text)
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    common.write("gpu", "GPU acceptance", {"rows": rows, "plain_loop_samples_per_s": plain,
                                           "summary": summary, "extra": extra,
                                           "gpus": names, "args": vars(args)},
                 f"GPUs: {gpus} x {names[0]}. Plain PyTorch loop: {plain}.\n\n{text}\n\n"
                 f"Summary: {summary}\n")
    return 0 if summary["all_ok"] and summary["fp16_restart"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
