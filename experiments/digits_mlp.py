"""A small sweep on sklearn's digits: 4 trials, 2 DDP workers each, Adam vs SGD.

Run it: `dlopt run experiments/digits_mlp.py`
"""
from dlopt import Data, Experiment, Model, Optimizer, Resources, Schedule, Search, Tracking, tune

experiment = Experiment(
    name="digits-mlp",
    seed=0,
    epochs=8,
    data=Data(dataset="digits", batch_size=64, val_fraction=0.2),
    model=Model(arch="mlp", hidden=[128, 64], activation="relu", init="kaiming_uniform"),
    optimizer=Optimizer(name=tune.grid(["adam", "sgd"]), lr=tune.choice([0.003, 0.03]), momentum=0.9),
    schedule=Schedule(name="cosine"),
    search=Search(algorithm="grid", metric="val_accuracy", mode="max", max_concurrent_trials=2),
    resources=Resources(num_workers=2, cpus_per_worker=1),
    tracking=Tracking(experiment="digits-mlp", register_as="digits-mlp"),
)
