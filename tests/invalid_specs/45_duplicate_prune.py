# expect: compression: each stage kind
from dlopt import Experiment, Prune

experiment = Experiment(name="bad", epochs=4, compression=[Prune(sparsity=0.5), Prune(sparsity=0.8)])
