"""Data augmentation, a regularization section (`Regularization.augment`), and its checks.

What runs is dlopt.stages.augment (on the device, training batches only); here only the
fields and the refusals that need no data: crop and flip need image inputs, mixup and cutmix
mix class labels. A custom dataset's inputs are known only once it loads: the driver's
preflight checks those before Ray starts (dlopt.driver.preflight.augment_problems).
"""
from __future__ import annotations

from pydantic import Field

from dlopt.spec.fields import S, _Base, _points

# Built-in datasets whose inputs are images, by (height, width) as dlopt's conv models see
# them (dlopt.ml.vision_models.image_shape: digits' 64 flat pixels are one 8x8 channel).
# A unit test checks these against the loaded shapes.
IMAGE_SIDES = {"digits": (8, 8), "mnist": (28, 28), "fashion_mnist": (28, 28),
               "cifar10": (32, 32)}
# Built-in datasets of flat features: nothing to crop or flip.
FLAT_DATASETS = ("synthetic", "linear_1d")


class Augment(_Base):
    """Augmentation of training batches (dlopt.stages.augment); every field may be searched.

    - crop_padding: pad each image by this many zero pixels on every side, then crop a window
      of the original size at a random offset (0: no crop);
    - flip: mirror each image left-right with probability 1/2;
    - mixup_alpha: mixup (Zhang et al. 2018): each batch is mixed with a shuffled copy of
      itself, lam ~ Beta(alpha, alpha), loss lam*L(y_a) + (1-lam)*L(y_b); 0: off (so a
      search can switch it: `tune.grid([0.0, 0.2])`);
    - cutmix_alpha: cutmix (Yun et al. 2019): a box of area 1-lam is pasted from the shuffled
      copy, lam ~ Beta(alpha, alpha) then set to the kept area; 0: off. With both set, each
      batch uses one of the two, chosen with probability 1/2 (as timm does).
    """

    crop_padding: S[int, Field(ge=0)] = 0
    flip: S[bool] = False
    mixup_alpha: S[float, Field(ge=0)] = 0.0
    cutmix_alpha: S[float, Field(ge=0)] = 0.0


def _on(value) -> bool:
    return value is not None and any(p not in (None, 0, False) for p in _points(value))


def augment_problems(spec) -> list[str]:
    """One line per augmentation that cannot apply to this spec's data, naming the field."""
    aug = spec.regularization.augment
    if aug is None:
        return []
    where = "regularization.augment"
    problems = []
    datasets = _points(spec.data.dataset)
    for field, what in (("crop_padding", "random crop"), ("flip", "horizontal flip"),
                        ("cutmix_alpha", "cutmix (a pasted box)")):
        if not _on(getattr(aug, field)):
            continue
        flat = [d for d in datasets if d in FLAT_DATASETS]
        if flat:
            problems.append(f"{where}.{field}: {what} needs image inputs; dataset {flat[0]!r} has "
                            f"flat features (use an image dataset: {', '.join(IMAGE_SIDES)}, or "
                            "a custom one whose rows are images)")
    if _on(aug.crop_padding):
        pad = max(_points(aug.crop_padding))
        for d in datasets:
            if d in IMAGE_SIDES and pad >= min(IMAGE_SIDES[d]):
                problems.append(f"{where}.crop_padding: {pad} pixels is at least the image side "
                                f"({min(IMAGE_SIDES[d])}) of dataset {d!r}: a crop could hold "
                                "nothing but padding; use fewer")
    for field, what in (("mixup_alpha", "mixup"), ("cutmix_alpha", "cutmix")):
        if _on(getattr(aug, field)) and spec.task == "regression":
            problems.append(f"{where}.{field}: {what} mixes class labels; a regression task has "
                            "none (classification only)")
    return problems
