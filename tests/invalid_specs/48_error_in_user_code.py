# expect: spec: 48_error_in_user_code.py:6: IndexError
from dlopt import Experiment, Model

widths = [64, 32]
# the user's own bug: the error names this file and line, not dlopt's internals
experiment = Experiment(name="bad", model=Model(hidden=[widths[0], widths[2]]))
