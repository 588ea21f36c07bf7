"""Compression-aware multi-objective sweep on digits: accuracy after compression vs bytes.

Optuna's multi-objective sampler (NSGA-II) searches training and compression knobs together;
at the end every Pareto-optimal compressed model is registered as a version of
`digits-pareto`, with aliases `most-accurate`, `smallest` and `fastest` (latency is measured
for every compressed model), and `pareto/pareto.png` + `pareto/trials.csv` land on the sweep's
parent run. Add `"latency_ms": "min"` to the objectives for a three-way front.

Run it: `dlopt run experiments/pareto_digits.py`
"""
from dlopt import (Data, Experiment, Model, Optimizer, Prune, Quantize, Resources, Search,
                   Tracking, tune)

experiment = Experiment(
    name="pareto-digits",
    seed=0,
    epochs=4,
    data=Data(dataset="digits", batch_size=64),
    model=Model(arch="mlp", hidden=[tune.choice([32, 64, 128])], init="kaiming_uniform"),
    optimizer=Optimizer(name="adam", lr=tune.loguniform(3e-3, 3e-2)),
    compression=tune.choice([
        [Prune(sparsity=0.5)],
        [Prune(sparsity=0.9)],
        [Prune(sparsity=0.8), Quantize(method="dynamic")],
        [Quantize(method="dynamic")],
    ]),
    search=Search(algorithm="bayesian", num_samples=6, seed=0, max_concurrent_trials=2,
                  objectives={"compressed_val_accuracy": "max", "model_bytes": "min"}),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="pareto-digits", register_as="digits-pareto"),
)
