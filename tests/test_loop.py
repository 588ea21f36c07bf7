"""The training loop without Ray: reports, checkpoints, resume, divergence."""

import pytest
import torch

from dlopt import Experiment, Model, Optimizer, Tracking
from dlopt.artifact.files import build_from_dir
from dlopt.train.loop import fit, load_checkpoint


class Reports:
    def __init__(self, tmp_path):
        self.metrics, self.dirs, self.tmp = [], [], tmp_path

    def __call__(self, metrics, write=None):
        self.metrics.append(metrics)
        if write is not None:
            d = self.tmp / f"ckpt{len(self.metrics)}"
            d.mkdir()
            write(d)
            self.dirs.append(d)


def spec(**kw):
    """Reports every epoch (these tests are about per-epoch checkpoints); see the
    batching test below for the default `report_every="auto"`."""
    base = dict(name="t", epochs=4, model=Model(hidden=[32]), optimizer=Optimizer(name="adam", lr=3e-3),
                tracking=Tracking(report_every=1))
    return Experiment(**{**base, **kw})


def test_auto_cadence_batches_epochs_and_loses_none(tmp_path):
    """A report far slower than an epoch: the loop reports the first epoch, then carries the
    epochs it skips in the next report's `epoch_history` (dlopt.train.cadence)."""
    import time

    r = Reports(tmp_path)

    def slow_report(metrics, write=None):
        r(metrics, write)
        time.sleep(0.2)  # 0.2 s per report: 5% budget = 4 s of training between reports

    fit(spec(epochs=8, tracking=Tracking()), slow_report)
    reported = [m["epoch"] for m in r.metrics if not m.get("final")]
    assert reported == [1, 8]  # the first (measures the cost) and the last
    carried = [h["epoch"] for h in r.metrics[1]["epoch_history"]]
    assert carried == [2, 3, 4, 5, 6, 7]
    batch = r.metrics[1]["epoch_history"] + [r.metrics[1]]
    ends = [m["epoch_end_time"] for m in batch]
    assert ends == sorted(ends)
    # epochs 3..8 followed one another with no 0.2 s report in between (robust to slow epochs)
    trained = sum(m["epoch_seconds"] for m in batch[1:])
    assert ends[-1] - ends[0] < trained + 0.15, (ends[-1] - ends[0], trained)


def test_reports_each_epoch_then_final(tmp_path):
    r = Reports(tmp_path)
    fit(spec(), r)
    epochs = [m["epoch"] for m in r.metrics if not m.get("final")]
    assert epochs == [1, 2, 3, 4]
    for m in r.metrics[:-1]:
        assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch"} <= set(m)
    final = r.metrics[-1]
    assert final["final"] == 1 and final["val_accuracy"] > 0.9
    assert final["model_bytes"] > 0
    # no compression stage: no compression metrics (honest summaries)
    assert not {"compressed_val_accuracy", "dense_bytes", "compression_ratio"} & set(final)
    model = build_from_dir(r.dirs[-1])
    assert isinstance(model, torch.nn.Module)


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path):
    (tmp_path / "a").mkdir()
    full = Reports(tmp_path / "a")
    fit(spec(), full)
    (tmp_path / "b").mkdir()
    part = Reports(tmp_path / "b")
    fit(spec(epochs=2), part)
    ckpt = load_checkpoint(part.dirs[1])
    assert ckpt.epoch == 2
    (tmp_path / "c").mkdir()
    rest = Reports(tmp_path / "c")
    fit(spec(), rest, resume=ckpt)
    assert [m["epoch"] for m in rest.metrics if not m.get("final")] == [3, 4]
    # same seed, same data order: the resumed run ends where the uninterrupted one did
    assert rest.metrics[-2]["train_loss"] == pytest.approx(full.metrics[-2]["train_loss"], rel=1e-5)


def test_divergence_stops_and_is_flagged(tmp_path):
    r = Reports(tmp_path)
    fit(spec(optimizer=Optimizer(name="sgd", lr=1e6), epochs=5), r)
    assert r.metrics[-1].get("diverged") == 1
    assert len(r.metrics) <= 5


def test_resume_after_the_last_epoch_still_reports_its_metrics(tmp_path):
    """Killed between the last epoch's checkpoint and the final report: the retry trains no
    epoch, and its final report still carries the last epoch's validation metrics."""
    (tmp_path / "a").mkdir()
    first = Reports(tmp_path / "a")
    fit(spec(epochs=2), first)
    ckpt = load_checkpoint(first.dirs[1])
    assert ckpt.epoch == 2
    (tmp_path / "b").mkdir()
    again = Reports(tmp_path / "b")
    fit(spec(epochs=2), again, resume=ckpt)
    assert [m.get("final") for m in again.metrics] == [1]
    assert again.metrics[0]["val_accuracy"] == first.metrics[1]["val_accuracy"]


def test_a_misspelled_event_is_an_error():
    from dlopt.stages import Event, Stage, State, run_event

    state = State(spec=None, model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError):
        run_event([], "epoch_ends", state)
    with pytest.raises(ValueError):
        Stage().run("after_stepp", state)
    run_event([Stage()], Event.EPOCH_END, state)
    assert Event("fit_end") is Event.FIT_END


@pytest.mark.parametrize("strategy, world, expect", [
    ("ddp", 1, "DataParallel"), ("ddp", 2, "DataParallel"),
    ("fsdp", 2, "FullySharded"), ("pipeline", 2, "Pipelined"),
    ("fsdp", 1, "DataParallel"), ("pipeline", 1, "DataParallel"),  # alone: plain training
])
def test_one_loop_picks_its_strategy(strategy, world, expect):
    from dlopt.train import strategies

    s = Experiment.model_validate({"name": "t", "model": {"hidden": [8, 8]},
                                   "resources": {"num_workers": 2, "strategy": strategy}})
    picked = strategies.pick(s, 0, world, "cpu", lambda m: m)
    assert type(picked).__name__ == expect
    assert picked.data_world == (1 if expect == "Pipelined" else world)
