# expect: regularization.l2: tune.uniform needs low < high
from dlopt import Experiment, Regularization, tune

experiment = Experiment(name="bad", regularization=Regularization(l2=tune.uniform(0.1, 0.01)))
