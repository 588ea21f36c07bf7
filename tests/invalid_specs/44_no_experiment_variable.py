# expect: spec: 44_no_experiment_variable.py must define
from dlopt import Experiment

exp = Experiment(name="bad")
