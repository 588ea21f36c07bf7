# expect: regularization.augment: crop, flip and cutmix need image inputs
# A custom dataset whose rows are 5 flat features (not a square image): flipping them is
# refused before Ray starts, once the driver's preflight has loaded the dataset. The dataset
# is this file's own module, importable from its folder.
import numpy as np

from dlopt import Augment, Data, Experiment, Regularization


def flat_rows(spec, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % 3, "classification"


experiment = Experiment(name="bad-run", epochs=1,
                        data=Data(dataset="r9_augment_flip_on_custom_flat_rows:flat_rows"),
                        regularization=Regularization(augment=Augment(flip=True)))
