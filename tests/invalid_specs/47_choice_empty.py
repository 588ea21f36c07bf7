# expect: model.hidden: tune.choice needs at least 1 value
from dlopt import Experiment, Model, tune

experiment = Experiment(name="bad", model=Model(hidden=tune.choice([])))
