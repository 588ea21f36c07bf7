"""The 3-conv CNN of the classic MNIST example (32-64-128 filters, dense 128) trained with Adam.

On digits by default (64 features viewed as 1x8x8 images); on MNIST with a local copy:
`DLOPT_MNIST_ROOT=/data/mnist dlopt run experiments/cnn_adam.py`.
"""
import os

from dlopt import (Data, Experiment, Model, Optimizer, Resources, Schedule, Search, Tracking)

MNIST_ROOT = os.environ.get("DLOPT_MNIST_ROOT")

experiment = Experiment(
    name="cnn-adam",
    seed=0,
    epochs=10,
    data=Data(dataset="mnist", root=MNIST_ROOT, batch_size=128) if MNIST_ROOT
    else Data(dataset="digits", batch_size=64),
    model=Model(arch="cnn", activation="relu", dropout=0.25, init="kaiming_normal"),
    optimizer=Optimizer(name="adam", lr=1e-3),
    schedule=Schedule(name="cosine", warmup_epochs=1),
    search=Search(metric="val_accuracy", mode="max"),
    resources=Resources(num_workers=2),
    tracking=Tracking(experiment="cnn-adam", register_as="cnn-adam"),
)
