# expect: epochs: tune.randint needs low < high
from dlopt import Experiment, tune

experiment = Experiment(name="bad", epochs=tune.randint(5, 2))
