"""Linear regression by gradient descent: y = 2x + 1 + noise, 100 points (the textbook example).

Three trials, one per algorithm, all SGD updates with heavy-ball momentum 0.8 and a
cosine-decayed lr (momentum lets full-batch GD, one step per epoch, converge in 50 epochs):
- full-batch gradient descent: batch_size 1000 >= the 60 training points, so every step
  uses the whole training set (one step per epoch), exactly what optimizer `gd` does;
- mini-batch SGD: batch 10 (6 steps per epoch);
- per-sample SGD: batch 1 (one step per example).
The grid varies only the batch size: a grid over optimizer name x batch size would run
`gd` once per batch size (4 trials, two identical), and the spec has no tied (zipped) grid.
Each trial recovers slope ~2 and intercept ~1 (tests/integration/test_catalog_experiments.py).

Run it: `dlopt run experiments/linear_regression_gd.py`
"""
from dlopt import Data, Experiment, Model, Optimizer, Resources, Schedule, Search, Tracking, tune

FULL_BATCH = 1000  # more than the training split holds: one batch = the whole set

experiment = Experiment(
    name="linear-regression-gd",
    seed=0,
    epochs=50,
    data=Data(dataset="linear_1d", batch_size=tune.grid([FULL_BATCH, 10, 1])),
    model=Model(arch="linear"),
    optimizer=Optimizer(name="sgd", lr=0.1, momentum=0.8),
    schedule=Schedule(name="cosine"),
    search=Search(algorithm="grid", metric="val_loss", mode="min", max_concurrent_trials=3),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="linear-regression-gd"),
)
