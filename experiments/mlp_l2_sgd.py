"""An MLP with one hidden layer of 512, He-uniform init, L2 0.001, SGD lr 0.01 momentum 0.9.

Runs on sklearn's digits (64 inputs) by default; on MNIST (784 inputs) when a local copy
is given: `DLOPT_MNIST_ROOT=/data/mnist dlopt run experiments/mlp_l2_sgd.py` (the folder
holding MNIST/raw/*-ubyte[.gz], as torchvision lays it out).
"""
import os

from dlopt import (Data, Experiment, Model, Optimizer, Regularization, Resources, Search,
                   Tracking)

MNIST_ROOT = os.environ.get("DLOPT_MNIST_ROOT")

experiment = Experiment(
    name="mlp-l2-sgd",
    seed=0,
    epochs=10,
    data=Data(dataset="mnist", root=MNIST_ROOT, batch_size=32) if MNIST_ROOT
    else Data(dataset="digits", batch_size=32),
    model=Model(arch="mlp", hidden=[512], activation="relu", init="kaiming_uniform"),
    optimizer=Optimizer(name="sgd", lr=0.01, momentum=0.9),
    regularization=Regularization(l2=0.001),
    search=Search(metric="val_accuracy", mode="max"),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="mlp-l2-sgd", register_as="mlp-l2-sgd"),
)
