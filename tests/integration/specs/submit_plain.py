"""`ray job submit` test spec: 1 trial, 2 DDP workers spread over the cluster's nodes, no
tracking settings: inside the job the sweep goes to dlopt's durable defaults."""
from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking

experiment = Experiment(
    name="it-plain",
    seed=0,
    epochs=2,
    data=Data(dataset="digits", batch_size=64, test_fraction=0.2),
    model=Model(hidden=[32]),
    optimizer=Optimizer(name="adam", lr=0.01),
    search=Search(algorithm="grid", num_samples=1),
    resources=Resources(num_workers=2, cpus_per_worker=1, placement="spread"),
    tracking=Tracking(experiment="it-plain", register_as="it-plain-model"),
)
