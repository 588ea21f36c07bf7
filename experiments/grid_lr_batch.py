"""Grid search over learning rate {0.01, 0.1, 1} x batch size {32, 64, 128}: 9 trials.

SGD with momentum on a digits MLP; lr 1 is expected to diverge for some batch sizes, which
dlopt flags (`dlopt.status=diverged`) and leaves out of the best-trial choice.
"""
from dlopt import (Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune)

experiment = Experiment(
    name="grid-lr-batch",
    seed=0,
    epochs=10,
    data=Data(dataset="digits", batch_size=tune.grid([32, 64, 128])),
    model=Model(arch="mlp", hidden=[128], init="kaiming_uniform"),
    optimizer=Optimizer(name="sgd", lr=tune.grid([0.01, 0.1, 1.0]), momentum=0.9),
    search=Search(algorithm="grid", metric="val_accuracy", mode="max", max_concurrent_trials=2),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="grid-lr-batch", register_as="grid-lr-batch"),
)
