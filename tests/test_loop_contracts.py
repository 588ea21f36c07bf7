"""The typed contracts of the worker side (issue 25): the checkpoint, the fault hook passed in,
the teachers handed to the Distill stage, the compression result."""

import inspect

import pytest
import torch

from dlopt import Distill, Experiment, Model, Optimizer, Tracking
from dlopt.train import checkpoint, faults
from dlopt.train.checkpoint import CHECKPOINT_FILE, TrialCheckpoint, load_checkpoint
from dlopt.train.loop import fit


def spec(**kw):
    base = dict(name="t", epochs=3, model=Model(hidden=[16]),
                optimizer=Optimizer(name="adam", lr=3e-3), tracking=Tracking(report_every=1))
    return Experiment(**{**base, **kw})


def test_checkpoint_keeps_the_on_disk_format(tmp_path):
    """A TrialCheckpoint writes the plain dict earlier versions wrote, and such a dict (an
    existing checkpoint) restores as a TrialCheckpoint."""
    ckpt = TrialCheckpoint(epoch=2, step=10, scheduler={"last_epoch": 2}, stages=[{}],
                           metrics={"val_loss": 0.5}).with_weights({"w": torch.ones(1)}, {"s": 1})
    checkpoint.save(ckpt, tmp_path)
    raw = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert set(raw) == {"scheduler", "epoch", "step", "stages", "metrics", "model", "optimizer"}
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"scheduler": {}, "epoch": 1, "step": 3, "stages": [], "metrics": {}},
               old / CHECKPOINT_FILE)
    back = load_checkpoint(old)
    assert (back.epoch, back.step, back.model, back.sharded) == (1, 3, None, None)
    (old / checkpoint.SHARDED_DIR).mkdir()
    (old / checkpoint.SHARDED_DIR / "stage0.pt").write_bytes(b"x")
    copied = load_checkpoint(old).sharded  # outlives the directory it was read from
    assert copied and copied != str(old / checkpoint.SHARDED_DIR)


def test_fault_hook_comes_from_the_caller_and_the_loop_reads_no_environment(tmp_path,
                                                                            monkeypatch):
    from dlopt.train import loop, strategies

    for module in (loop, strategies):
        source = inspect.getsource(module)
        assert "os.environ" not in source and "getenv" not in source
    monkeypatch.setenv(faults.DELAY_ENV, "30")  # read by the loop, this test would time out

    class Counting(faults.Faults):
        calls = 0

        def slow_epoch(self):
            type(self).calls += 1

    fit(spec(), lambda m, w=None: None)
    fit(spec(), lambda m, w=None: None, faults=Counting())
    assert Counting.calls == 3


def test_faults_from_the_environment_once_and_as_json():
    assert faults.Faults.from_env({}) is None
    hook = faults.Faults.from_env({faults.ENV: "2:/tmp/marker", faults.DELAY_ENV: "0.5"})
    assert hook == faults.Faults(kill_at_epoch=2, marker="/tmp/marker", epoch_delay_s=0.5)
    assert faults.Faults.from_json(hook.to_json()) == hook
    assert faults.Faults.from_env({faults.DELAY_ENV: "1"}) == faults.Faults(epoch_delay_s=1.0)


def test_distill_without_the_teacher_handed_over_names_the_uri():
    from dlopt.stages import catalog

    uri = "models:/absent@champion"
    with pytest.raises(LookupError, match="models:/absent@champion"):
        catalog.build(spec(compression=[Distill(teacher=uri)]))


def test_compression_result_is_handed_on_not_changed():
    from dlopt.stages import CompressionResult

    first = CompressionResult().with_metrics({"dense_bytes": 10})
    second = first.with_metrics({"sparsity": 0.5})
    assert dict(first.metrics) == {"dense_bytes": 10}
    assert dict(second.metrics) == {"dense_bytes": 10, "sparsity": 0.5}
    with pytest.raises(AttributeError):
        second.artifact = None


def test_registry_tags_name_the_version_the_trial_reported():
    from dlopt.registry.teachers import registry_tags

    uri = "models:/t@champion"
    s = spec(compression=[Distill(teacher=uri)])
    assert registry_tags(s, {"distill_teacher_version": 4}) == {
        "dlopt.teacher": uri, "dlopt.teacher_version": "4"}
    assert registry_tags(spec(), {}) == {}
