# expect: compression[0].teacher: models:/
from dlopt import Distill, Experiment

experiment = Experiment(name="bad-run", epochs=1,
                        compression=[Distill(teacher="models:/no-such-teacher/3")])
