# expect: optimizer.lr: tune.loguniform low must be > 0
from dlopt import Experiment, Optimizer, tune

experiment = Experiment(name="bad", optimizer=Optimizer(name="sgd", lr=tune.loguniform(0, 1)))
