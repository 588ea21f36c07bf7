# expect: model.init
from dlopt import Experiment, Model

experiment = Experiment(name="bad", model=Model(init="he_magic"))
