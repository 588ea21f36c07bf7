# expect: optimizer.lr: Input should be
from dlopt import Experiment, Optimizer

experiment = Experiment(name="bad", optimizer=Optimizer(name="sgd", lr=0.0))
