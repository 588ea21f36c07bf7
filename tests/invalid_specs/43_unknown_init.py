# expect: model.init: unknown init 'he_magic';
from dlopt import Experiment, Model

experiment = Experiment(name="bad", model=Model(init="he_magic"))
