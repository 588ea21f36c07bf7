"""Report cadence: when the loop reports to Tune (dlopt.train.cadence). No Ray, no torch."""
from dlopt import Experiment, Search
from dlopt.train.cadence import Cadence, scheduler_epochs


def reported_epochs(cadence: Cadence, epochs: int, epoch_s: float, report_s: float,
                    stop_at: int = 0) -> list[int]:
    out = []
    for epoch in range(1, epochs + 1):
        if cadence.due(epoch, epoch_s, stopping=epoch == stop_at):
            out.append(epoch)
            cadence.reported(report_s)
            if epoch == stop_at:
                break
    return out


def test_auto_batches_short_epochs_within_budget():
    # 10 ms epochs, 20 ms reports: a report only after 0.4 s of training (5% budget)
    got = reported_epochs(Cadence("auto", 100), 100, 0.010, 0.020)
    assert got[0] == 1 and got[-1] == 100
    gaps = [b - a for a, b in zip(got, got[1:-1])]
    assert gaps and all(g == 40 for g in gaps), got  # 40 x 10 ms x 5% = one 20 ms report


def test_auto_reports_every_long_epoch():
    assert reported_epochs(Cadence("auto", 5), 5, 1.0, 0.020) == [1, 2, 3, 4, 5]


def test_fixed_every_n_and_every_epoch():
    assert reported_epochs(Cadence(3, 10), 10, 0.01, 1.0) == [3, 6, 9, 10]
    assert reported_epochs(Cadence(1, 4), 4, 0.01, 1.0) == [1, 2, 3, 4]


def test_stopping_epoch_and_forced_epochs_are_reported():
    assert reported_epochs(Cadence("auto", 50), 50, 0.01, 1.0, stop_at=7) == [1, 7]
    assert reported_epochs(Cadence("auto", 20, {4, 8}), 20, 0.01, 1.0) == [1, 4, 8, 20]
    assert reported_epochs(Cadence("auto", 3, None), 3, 0.01, 1.0) == [1, 2, 3]


def test_scheduler_epochs():
    def spec(**search):
        return Experiment(name="c", epochs=20, search=Search(algorithm="random", **search))

    asha = spec(scheduler="asha", grace_period=1, reduction_factor=3).search
    assert scheduler_epochs(asha, 20) == {1, 3, 9}
    pbt = spec(scheduler="pbt", perturbation_interval=4,
               pbt_mutations={"optimizer.lr": [0.01, 0.1]}).search
    assert scheduler_epochs(pbt, 20) == {4, 8, 12, 16, 20}
    assert scheduler_epochs(spec(scheduler="hyperband").search, 20) is None
    assert scheduler_epochs(spec().search, 20) == set()


def test_spec_report_every():
    assert Experiment(name="c").tracking.report_every == "auto"
    assert Experiment.model_validate({"name": "c", "tracking": {"report_every": 2}}
                                     ).tracking.report_every == 2
    for bad in (0, "sometimes"):
        try:
            Experiment.model_validate({"name": "c", "tracking": {"report_every": bad}})
        except ValueError as err:
            assert "tracking.report_every" in str(err)
        else:
            raise AssertionError(bad)
