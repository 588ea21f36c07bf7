# expect: spec
from dlopt import Experiment

exp = Experiment(name="bad")
