"""Data augmentation of training batches: random crop with padding, horizontal flip, mixup,
cutmix (the spec's `Regularization.augment`, dlopt.spec.augmentation).

Where it runs: on the device, right after a training batch arrives in the loop
(dlopt.train.loop.train_epoch calls `BatchAugment`), never in a data pipeline. Why there:
- one code path for every way a batch arrives: in-memory tensors indexed by the loop and
  batches streamed to a worker both end as `(x, y)` on the device, and both are augmented by
  the same lines;
- no CPU bottleneck: a 2-core node would spend its cores on per-image Python transforms
  while the GPU waits; here each step is a few batched tensor ops on the device;
- nothing else sees it: validation, test, calibration (dlopt.stages.quantize reads the
  training split itself), the distillation teacher's agreement and the saved model all take
  the data as it is, so the registered model still takes raw inputs.

Seeded per (Experiment.seed, data rank, epoch, step in epoch) with a `torch.Generator` on the
batch's device: a rerun repeats every crop, flip and mix; DDP ranks draw differently; pipeline
ranks (which all walk the same batches, data rank 0) draw the same. The scalar draws (mixup's
lam, cutmix's box, which of the two) come from Python's `random.Random` on the same seed, so
they cost no device-to-host sync.

Mixup and cutmix return soft targets `lam * onehot(y_a) + (1 - lam) * onehot(y_b)`: cross
entropy is linear in its target, so the loop's unchanged loss (`F.cross_entropy` takes class
probabilities) computes exactly lam*L(y_a) + (1-lam)*L(y_b), label smoothing included
(tests/test_augment.py checks the identity), and DDP, FSDP, the pipeline's loss on the last
stage and distillation's hard term need no second code path.

Hand-written tensor ops, not torchvision.transforms.v2: v2's RandomCrop/RandomHorizontalFlip
draw one crop/flip per call (the whole batch moves together), and its MixUp/CutMix draw from
torch's global RNG with no generator argument, so neither gives per-sample, per-(rank, step)
seeded draws on the device; torchvision is also not installable beside the pinned torch here.
"""
from __future__ import annotations

import hashlib
import math
import random
from typing import Optional

import torch
import torch.nn.functional as F

from dlopt.ml.vision_models import image_shape
from dlopt.spec.augmentation import Augment


def batch_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """One 63-bit seed per (Experiment.seed, rank, epoch, step), well mixed (blake2b)."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{epoch}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) padded by `padding` zeros per side, then an H x W window at a
    random offset in [0, 2*padding] per axis, drawn per image: a shift with zeros let in."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # (N, H, W, C) gathered with one advanced index, back to (N, C, H, W)
    window = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return window.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) mirrored left-right with probability 1/2, drawn per image."""
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).float()


def mixup(x: torch.Tensor, target: torch.Tensor, lam: float, perm: torch.Tensor):
    """x mixed with its `perm`-shuffled copy: lam*x + (1-lam)*x[perm]; targets (soft, N x K)
    alike."""
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def cut_box(h: int, w: int, lam: float, rng: random.Random) -> tuple[int, int, int, int]:
    """cutmix's box (top, bottom, left, right): sides sqrt(1-lam) of the image's, centred at a
    uniform pixel, clipped to the image (so it may hold less than 1-lam of the area)."""
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = rng.randrange(h), rng.randrange(w)
    return (max(cy - ch // 2, 0), min(cy + ch // 2 + ch % 2, h),
            max(cx - cw // 2, 0), min(cx + cw // 2 + cw % 2, w))


def cutmix(x: torch.Tensor, target: torch.Tensor, box: tuple[int, int, int, int],
           perm: torch.Tensor):
    """The box of each image (N, C, H, W) replaced by the same box of x[perm]; targets mixed
    by the area kept, lam = 1 - box area / image area. Returns (x, target, lam)."""
    top, bottom, left, right = box
    h, w = x.shape[-2:]
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    return x, lam * target + (1 - lam) * target[perm], lam


class BatchAugment:
    """The loop's thin wrapper: `(x, y, epoch, step) -> (x, y)` for one training batch.

    Inputs keep their shape: a flat square row (digits' 64 pixels) is viewed as its image for
    crop/flip/cutmix and handed back flat. With mixup/cutmix, y comes back as soft targets
    (N, num_classes); otherwise as it came."""

    def __init__(self, spec: Augment, seed: int, rank: int, input_shape, num_classes: int):
        self.spec, self.seed, self.rank = spec, seed, rank
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.needs_image = bool(spec.crop_padding or spec.flip or spec.cutmix_alpha)
        self.image = image_shape(self.input_shape) if self.needs_image else None
        self.mixes = [(name, alpha) for name, alpha in (("mixup", spec.mixup_alpha),
                                                        ("cutmix", spec.cutmix_alpha)) if alpha]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int):
        s = batch_seed(self.seed, self.rank, epoch, step)
        g, rng = generator(s, x.device), random.Random(s)
        if self.image is not None:
            x = x.reshape(len(x), *self.image)
            x = random_crop(x, self.spec.crop_padding, g)
            if self.spec.flip:
                x = random_flip(x, g)
        if self.mixes:
            name, alpha = self.mixes[0] if len(self.mixes) == 1 else rng.choice(self.mixes)
            lam = rng.betavariate(alpha, alpha)
            perm = torch.randperm(len(x), generator=g, device=x.device)
            target = one_hot(y, self.num_classes)
            if name == "mixup":
                x, y = mixup(x, target, lam, perm)
            else:
                x, y, _ = cutmix(x, target, cut_box(*x.shape[-2:], lam, rng), perm)
        return x.reshape(len(x), *self.input_shape), y


def build(spec: Optional[Augment], seed: int, rank: int, input_shape, task: str,
          num_classes: int) -> Optional[BatchAugment]:
    """The wrapper for a trial, or None when nothing is on (the loop then does nothing extra).
    Refuses what the spec could not check before the data loaded (a custom dataset)."""
    if spec is None or not (spec.crop_padding or spec.flip or spec.mixup_alpha
                            or spec.cutmix_alpha):
        return None
    if (spec.mixup_alpha or spec.cutmix_alpha) and task != "classification":
        raise ValueError("regularization.augment: mixup/cutmix mix class labels; this dataset's "
                         f"task is {task}")
    try:
        return BatchAugment(spec, seed, rank, input_shape, num_classes)
    except ValueError as err:  # image_shape: not an image
        raise ValueError(f"regularization.augment: crop, flip and cutmix need image inputs; "
                         f"this dataset's rows have shape {tuple(input_shape)}") from err
