# expect: optimizer.lr
from dlopt import Experiment, Optimizer

experiment = Experiment(name="bad", optimizer=Optimizer(name="sgd", lr=0.0))
