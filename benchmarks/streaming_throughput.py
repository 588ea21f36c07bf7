"""Throughput baselines for streamed image training: samples/s of a 2-worker DDP `cnn` over an
image folder with flip + crop augmentation, for the comparison issue 27 asks for.

The script writes an image folder (PNG files, one subfolder per class; random pixels with a
class-dependent bright square so there is something to learn) and trains the same model,
dlopt's `cnn` (dlopt.ml.vision_models.cnn) at 3x32x32, on it three ways:
- (a) plain PyTorch: 2 processes (torch.multiprocessing, gloo, DistributedDataParallel), a
  `DataLoader(num_workers=W)` per rank over a map-style dataset that decodes each PNG with
  PIL and crops (zero padding) and flips it on the CPU, as a hand-written loader does;
- (b) plain Ray Train + Ray Data: `ray.data.read_images` over the same folder, labels from the
  class folder names, crop + flip in `map_batches` (CPU, Ray Data's pool), a `TorchTrainer`
  with 2 workers reading `get_dataset_shard("train").iter_torch_batches(...)`;
- (c) dlopt: a real `dlopt.run()` of a 1-trial spec, 2 workers (DDP through a TorchTrainer),
  `Data(source=Source(format="images", path=ROOT))` over the same training images (plus a
  small val/ folder dlopt validates on after each epoch: its own split, so the training split
  is exactly the folder (a) and (b) read), read by each rank's own DataLoader with
  `--loader-workers` processes as in (a) (`Source.reader="auto"`, dlopt.ml.rank_loader;
  `--dlopt-readers auto ray_data` adds a run through Ray Data shards for comparison),
  `Regularization(augment=Augment(crop_padding=4,
  flip=True))` (batched tensor ops in the loop, after the batch arrives), the same model,
  Adam 1e-3, batch size and epochs (`--warmup` + `--epochs`). dlopt reports each epoch's own
  seconds (`epoch_seconds`, dlopt.spec.report.EPOCH_SECONDS: rank 0's wall time of the
  epoch's training and validation), read back from MLflow; samples/s = training rows x timed
  epochs / the sum of the timed epochs' seconds. The target is >= 0.95x the better of (a) and
  (b), as a ratio from one run.

Timing: each rank runs `--warmup` epochs untimed, then a barrier, `--epochs` timed epochs and
a barrier; samples/s = samples all ranks trained in the timed epochs / that wall time (rank 0).
Every side trains the same number of samples per epoch (the training folder, split across 2
ranks). Each side's Ray instance is its own (started and shut down by the side). With
`--rounds N` the sides run in turn N times ((a), (b), (c), (a), ...) and each side's figure is
the median of its rounds: on a shared 2-core machine one side's run of a few seconds can land
in a slow minute (2 timed epochs gave (a) 1,158 samples/s in one run, 12 gave 977 minutes later).

    python benchmarks/streaming_throughput.py [--images 2000] [--epochs 6] [--rounds 2]
        [--loader-workers 1] [--dlopt-readers auto ray_data] [--skip-ray]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CLASSES, SIDE, PAD, WORLD = 10, 32, 4, 2


def write_folder(root: Path, images: int, seed: int = 0) -> list[tuple[str, int]]:
    """`images` PNGs under root/class_k/; returns (path, label) sorted by path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for i in range(images):
        label = i % CLASSES
        pixels = rng.integers(0, 128, size=(SIDE, SIDE, 3), dtype=np.uint8)
        top, left = 2 * (label // 5) * 8, (label % 5) * 6
        pixels[top:top + 8, left:left + 6] = 255  # the class's square
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.png"
        Image.fromarray(pixels).save(path)
        files.append((str(path), label))
    return sorted(files)


def model():
    from dlopt import Model
    from dlopt.ml.vision_models import cnn

    return cnn(Model(arch="cnn"), (3, SIDE, SIDE), CLASSES)


def crop_flip(img, rng):
    """One CHW float image: zero-pad by PAD, random SIDE x SIDE window, flip with p 1/2."""
    import torch.nn.functional as F

    padded = F.pad(img, (PAD, PAD, PAD, PAD))
    dy, dx = (int(v) for v in rng.integers(0, 2 * PAD + 1, size=2))
    out = padded[:, dy:dy + SIDE, dx:dx + SIDE]
    return out.flip(-1) if rng.random() < 0.5 else out


def timed_epochs(step_batches, warmup: int, epochs: int, device="cpu") -> tuple[float, int]:
    """Run warmup + epochs of `step_batches(epoch) -> samples`; (timed seconds, samples all
    ranks trained in the timed epochs)."""
    import torch
    import torch.distributed as dist

    for e in range(warmup):
        step_batches(e)
    dist.barrier()
    t0, samples = time.perf_counter(), 0
    for e in range(warmup, warmup + epochs):
        samples += step_batches(e)
    dist.barrier()
    seconds = time.perf_counter() - t0
    total = torch.tensor([samples], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return seconds, int(total.item())


def train_step_fn(ddp, optimizer):
    import torch.nn.functional as F

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
    return step


# ---------------------------------------------------------------- (a) plain PyTorch DDP
class FolderDataset:
    def __init__(self, files, seed: int):
        self.files, self.seed, self.epoch = files, seed, 0

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import numpy as np
        import torch
        from PIL import Image

        path, label = self.files[i]
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
                               / 255.0).permute(2, 0, 1)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        return crop_flip(img, rng), label


def _ddp_rank(rank: int, port: int, files, args, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    ddp = DistributedDataParallel(model())
    step = train_step_fn(ddp, torch.optim.Adam(ddp.parameters(), lr=1e-3))
    data = FolderDataset(files, seed=0)
    sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.loader_workers,
                        persistent_workers=args.loader_workers > 0)

    def one_epoch(e):
        sampler.set_epoch(e)
        data.epoch = e  # read by the workers only when they start (persistent: per run)
        n = 0
        for x, y in loader:
            step(x, y)
            n += len(y)
        return n

    seconds, samples = timed_epochs(one_epoch, args.warmup, args.epochs)
    if rank == 0:
        out.put({"seconds": seconds, "samples": samples})
    dist.destroy_process_group()


def plain_ddp(files, args) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, port, files, args, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    result = out.get(timeout=1800)
    for p in procs:
        p.join()
    return result


# ---------------------------------------------------------------- (b) Ray Train + Ray Data
def _ray_loop(config):
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ddp = prepare_model(model())
    step = train_step_fn(ddp, torch.optim.Adam(ddp.parameters(), lr=1e-3))
    shard = ray.train.get_dataset_shard("train")

    def one_epoch(e):
        n = 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"],
                                              dtypes={"image": torch.float32, "label": torch.int64}):
            step(batch["image"], batch["label"])
            n += len(batch["label"])
        return n

    seconds, samples = timed_epochs(one_epoch, config["warmup"], config["epochs"])
    if ray.train.get_context().get_world_rank() == 0:  # one machine: a file is the simplest way
        Path(config["out"]).write_text(json.dumps({"seconds": seconds, "samples": samples}))


def _augment_batch(batch: dict, class_index: dict) -> dict:
    import numpy as np
    import torch

    rng = np.random.default_rng()
    images = torch.from_numpy(np.asarray(batch["image"], dtype=np.float32) / 255.0).permute(0, 3, 1, 2)
    out = torch.stack([crop_flip(img, rng) for img in images])
    labels = np.array([class_index[Path(p).parent.name] for p in batch["path"]], dtype=np.int64)
    return {"image": out.numpy(), "label": labels}


def ray_train_data(root: Path, args, storage: str) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    class_index = {f"class_{k}": k for k in range(CLASSES)}
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_images(str(root), mode="RGB", include_paths=True)
        ds = ds.map_batches(_augment_batch, fn_kwargs={"class_index": class_index},
                            batch_size=args.batch_size)
        trainer = TorchTrainer(
            _ray_loop, train_loop_config={"batch_size": args.batch_size, "warmup": args.warmup,
                                          "epochs": args.epochs, "out": f"{storage}.json"},
            scaling_config=ScalingConfig(num_workers=WORLD, use_gpu=False),
            datasets={"train": ds}, run_config=RunConfig(storage_path=storage, name="throughput"))
        trainer.fit()
        return json.loads(Path(f"{storage}.json").read_text())
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- (c) dlopt
def dlopt_side(root: Path, args, work: Path, reader: str = "auto") -> dict:
    """A real 1-trial `dlopt.run()`: 2 DDP workers over the image folder, flip + crop.
    `reader`: `Source.reader` ("auto": each rank's own DataLoader with `--loader-workers`
    processes, as (a); "ray_data": Ray Data shards)."""
    from mlflow import MlflowClient

    import dlopt
    from dlopt import Augment, Data, Experiment, Model, Optimizer, Regularization, Resources
    from dlopt import Search, Tracking
    from dlopt.spec import Source
    from dlopt.spec.report import EPOCH_SECONDS

    spec = Experiment(
        name="throughput", seed=0, epochs=args.warmup + args.epochs,
        data=Data(batch_size=args.batch_size, source=Source(
            format="images", path=str(root), shuffle_buffer=args.dlopt_shuffle_buffer,
            reader=reader, loader_workers=args.loader_workers)),
        model=Model(arch="cnn"), optimizer=Optimizer(name="adam", lr=1e-3),
        regularization=Regularization(augment=Augment(crop_padding=PAD, flip=True)),
        search=Search(algorithm="random", num_samples=1),
        resources=Resources(num_workers=WORLD, max_failures=0),
        tracking=Tracking(experiment="throughput"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with common.Timer() as t:
        result = dlopt.run(spec, tracking_uri=uri, storage=str(work / "ray_results"),
                           progress=False)
    (trial,) = result.trials
    if trial.status != "ok":
        raise RuntimeError(f"the dlopt trial ended {trial.status}: {trial}")
    history = sorted(MlflowClient(uri).get_metric_history(trial.run_id, EPOCH_SECONDS),
                     key=lambda m: m.step)
    per_epoch = [m.value for m in history]
    timed = per_epoch[args.warmup:]
    rows = len(list((root / "train").glob("*/*.png")))
    return {"seconds": sum(timed), "samples": rows * len(timed), "epoch_seconds": per_epoch,
            "run_wall_seconds": t.seconds, "val_accuracy": trial.metrics.get("val_accuracy")}


def run_sides(root: Path, files, args, tmp: str, round_: int) -> dict:
    """One round: every selected side once, in the order (a), (b), (c)..."""
    sides = {}
    if args.only in (None, "ddp"):
        sides["(a) PyTorch DDP + DataLoader"] = plain_ddp(files, args)
        print(sides, flush=True)
    if args.only in (None, "ray") and not args.skip_ray:
        sides["(b) Ray Train + Ray Data"] = ray_train_data(root / "train", args,
                                                           str(Path(tmp) / f"ray-{round_}"))
        print(sides, flush=True)
    for reader in args.dlopt_readers if args.only in (None, "dlopt") else ():
        work = Path(tmp) / f"dlopt-{reader}-{round_}"
        work.mkdir()
        name = "(c) dlopt" if reader == args.dlopt_readers[0] else f"(c) dlopt {reader}"
        sides[name] = dlopt_side(root, args, work, reader)
        print(sides, flush=True)
    return sides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=6, help="timed epochs")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    ap.add_argument("--rounds", type=int, default=2,
                    help="every side runs once per round, sides alternating; each side's "
                         "figure is the median of its rounds (a noisy machine drifts)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=1,
                    help="DataLoader workers per rank ((a), and (c)'s Source.loader_workers)")
    ap.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs for ray.init (b)")
    ap.add_argument("--val-images", type=int, default=100,
                    help="images in val/ (dlopt validates on them after each epoch)")
    ap.add_argument("--dlopt-shuffle-buffer", type=int, default=1024,
                    help="(c) Source.shuffle_buffer (dlopt's default 1024)")
    ap.add_argument("--dlopt-readers", nargs="+", default=["auto"],
                    choices=["auto", "torch", "ray_data"],
                    help="(c) one dlopt run per Source.reader (default: auto, the rank loader)")
    ap.add_argument("--skip-ray", action="store_true",
                    help="leave (b) out (it was < 0.5x of (a) in every run so far)")
    ap.add_argument("--only", choices=["ddp", "ray", "dlopt"], help="run one side only")
    args = ap.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="dlopt-throughput-") as tmp:
        root = Path(tmp) / "images"
        with common.Timer() as t:
            files = write_folder(root / "train", args.images)
            write_folder(root / "val", args.val_images, seed=1)
        print(f"wrote {len(files)} + {args.val_images} PNGs under {root} in {t.seconds:.1f} s",
              flush=True)
        rounds = [run_sides(root, files, args, tmp, r) for r in range(args.rounds)]
    load = [round(x, 2) for x in os.getloadavg()]
    names = list(rounds[0])
    rows = []
    for name in names:
        rates = [r[name]["samples"] / r[name]["seconds"] for r in rounds]
        rows.append({"side": name, "samples": rounds[0][name]["samples"],
                     "samples_per_s": statistics.median(rates),
                     "rounds": [round(v) for v in rates]})
    baselines = [r["samples_per_s"] for r in rows if not r["side"].startswith("(c)")]
    best = max(baselines, default=None)
    for r in rows:
        r["of_best_baseline"] = r["samples_per_s"] / best if best else None
    dlopt_row = next((r for r in rows if r["side"].startswith("(c)")), None)
    ratio = dlopt_row["of_best_baseline"] if dlopt_row else None
    md = common.table(rows, ["side", "samples", "rounds", "samples_per_s", "of_best_baseline"])
    md += (f"\n\nsamples per round; samples_per_s: the median of the rounds. "
           f"(c) / max((a), (b)) = {ratio if ratio is None else round(ratio, 3)}; target "
           f">= 0.95, ratio from this one run. Load average at the start {load_start}, "
           f"at the end {load}.\n")
    if dlopt_row:
        md += "dlopt's epoch_seconds per epoch per round (first {} untimed): {}\n".format(
            args.warmup, [[round(v, 2) for v in r[dlopt_row["side"]]["epoch_seconds"]]
                          for r in rounds])
    common.write("streaming_throughput", "Streaming throughput (2 DDP workers, cnn 3x32x32, "
                 "flip + crop)", {"args": vars(args), "rows": rows, "best_baseline": best,
                                  "rounds": rounds, "dlopt": dlopt_row,
                                  "dlopt_over_best_baseline": ratio,
                                  "load_avg_at_start": load_start,
                                  "load_avg_at_end": load}, md)


if __name__ == "__main__":
    main()
