"""A stopping PBT trial ends its Train run even while the controller waits to hand it a
report (dlopt.runtime.trial.CheckpointForwarder.abort).

When Tune pauses a PBT trial, the trial stops taking reports: the controller's next
`after_report` waits on the full 1-slot queue, inside the controller's event loop. The abort
must still end the controller, its worker and their placement group, or the restarted trial
waits for those CPUs forever (a 2-worker PBT sweep hung so, in the full suite). Real Ray,
real Train run.
"""
import threading
import time

import pytest
import ray

from dlopt.runtime.trial import ABORT_TIMEOUT_S, CheckpointForwarder

CPUS = 3


@pytest.fixture
def local_ray():
    ray.init(num_cpus=CPUS, include_dashboard=False, ignore_reinit_error=True)
    try:
        yield
    finally:
        ray.shutdown()


def test_abort_ends_a_controller_blocked_on_a_full_queue(local_ray, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def reports_fast(config):  # nested: pickled by value (workers cannot import this module)
        import time

        import ray.train

        for step in range(200):
            ray.train.report({"step": step})
            time.sleep(0.01)

    forward = CheckpointForwarder()
    trainer = TorchTrainer(reports_fast, scaling_config=ScalingConfig(num_workers=1),
                           run_config=RunConfig(name="abort", storage_path=str(tmp_path),
                                                callbacks=[forward.callback]))
    failure: list = []
    fit = threading.Thread(target=lambda: _fit(trainer, failure), daemon=True)
    fit.start()
    metrics, _, forward.controller = forward.queue.get(timeout=120)
    assert metrics["step"] == 0
    # the trial stops taking reports (Tune paused it): the queue fills and the next put blocks
    deadline = time.monotonic() + 30
    while not forward.queue.full() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert forward.queue.full()
    time.sleep(1.0)

    started = time.monotonic()
    forward.abort()
    took = time.monotonic() - started
    assert took < ABORT_TIMEOUT_S, f"abort took {took:.1f} s: the controller had to be killed"

    fit.join(timeout=60)
    assert not fit.is_alive()
    # the controller's worker and placement group are gone: every CPU is free again
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < CPUS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == CPUS


def _fit(trainer, failure: list) -> None:
    try:
        trainer.fit()
    except BaseException as err:  # noqa: BLE001 (an aborted run may raise; the test checks resources)
        failure.append(err)
