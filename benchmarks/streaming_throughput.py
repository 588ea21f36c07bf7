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
- (c) dlopt's own streamed source (issue 27's other half, branch issue27a): NOT RUN HERE, a
  slot left in the table and the JSON (`"dlopt": null`) to be filled after that merge with a
  2-worker DDP `cnn` trial over the same folder with `Augment(crop_padding=4, flip=True)`;
  the target is >= 0.95x the better of (a) and (b), as a ratio from one run.

Timing: each rank runs `--warmup` epochs untimed, then a barrier, `--epochs` timed epochs and
a barrier; samples/s = samples all ranks trained in the timed epochs / that wall time (rank 0).
Every side trains the same number of samples per epoch (the folder, split across 2 ranks).

    python benchmarks/streaming_throughput.py [--images 2000] [--epochs 2] [--loader-workers 1]
"""
from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader workers per rank (a)")
    ap.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs for ray.init (b)")
    ap.add_argument("--only", choices=["ddp", "ray"], help="run one side only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlopt-throughput-") as tmp:
        root = Path(tmp) / "images"
        with common.Timer() as t:
            files = write_folder(root, args.images)
        print(f"wrote {len(files)} PNGs under {root} in {t.seconds:.1f} s", flush=True)
        sides = {}
        if args.only in (None, "ddp"):
            sides["(a) PyTorch DDP + DataLoader"] = plain_ddp(files, args)
            print(sides, flush=True)
        if args.only in (None, "ray"):
            sides["(b) Ray Train + Ray Data"] = ray_train_data(root, args, str(Path(tmp) / "ray"))
            print(sides, flush=True)
    rows = [{"side": name, "samples": r["samples"], "seconds": r["seconds"],
             "samples_per_s": r["samples"] / r["seconds"]} for name, r in sides.items()]
    best = max((r["samples_per_s"] for r in rows), default=None)
    for r in rows:
        r["of_best"] = r["samples_per_s"] / best
    rows.append({"side": "(c) dlopt streamed source: TO FILL after merging issue27a",
                 "samples": None, "seconds": None, "samples_per_s": None, "of_best": None})
    md = common.table(rows, ["side", "samples", "seconds", "samples_per_s", "of_best"])
    md += ("\n\nTarget: (c) >= 0.95x the better of (a) and (b), ratio from one run; (c) is not "
           "measured yet (slot `dlopt` in the JSON).\n")
    common.write("streaming_throughput", "Streaming throughput baselines (2 workers, cnn 3x32x32, "
                 "flip + crop)", {"args": vars(args), "rows": rows, "best_baseline": best,
                                  "dlopt": None,
                                  "dlopt_note": "fill after merging issue27a: a 2-worker DDP cnn "
                                                "trial over the same folder, Augment(crop_padding=4,"
                                                " flip=True), same images/epochs/batch size"}, md)


if __name__ == "__main__":
    main()
