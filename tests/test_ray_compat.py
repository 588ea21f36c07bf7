"""Every private Ray/MLflow attribute dlopt.runtime.ray_compat uses still exists with the shape it
relies on. A failure here means a Ray or MLflow upgrade moved one: update ray_compat (and the
pinned version) before a sweep finds out. No Ray cluster is started."""
import inspect
import os

from dlopt.runtime import ray_compat


def _reads_global(fn, name: str) -> bool:
    """`fn` looks `name` up in its module at each call (so replacing the module attribute holds)."""
    return name in fn.__code__.co_names


def test_tune_copies_env_vars_from_a_module_level_set_read_at_each_actor_class():
    from ray.tune.execution import class_cache

    names = class_cache.ENV_VARS_TO_PROPAGATE
    assert isinstance(names, (set, frozenset)) and "AWS_SECRET_ACCESS_KEY" in names
    assert _reads_global(class_cache._ActorClassCache.get, "ENV_VARS_TO_PROPAGATE")


def test_dropping_propagated_env_vars_keeps_the_others(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", frozenset(class_cache.ENV_VARS_TO_PROPAGATE))
    others = {k for k in class_cache.ENV_VARS_TO_PROPAGATE if not k.startswith("AWS_")}
    ray_compat.drop_propagated_env_vars("AWS_")
    assert set(class_cache.ENV_VARS_TO_PROPAGATE) == others and others


def test_a_sweep_narrows_the_propagated_set_only_while_it_runs():
    from ray.tune.execution import class_cache

    before = class_cache.ENV_VARS_TO_PROPAGATE
    with ray_compat.propagated_env_vars_restored():
        ray_compat.drop_propagated_env_vars("AWS_")
        assert not any(k.startswith("AWS_") for k in class_cache.ENV_VARS_TO_PROPAGATE)
    assert class_cache.ENV_VARS_TO_PROPAGATE is before


def test_a_restored_tuner_runs_with_its_run_config_callbacks(tmp_path):
    """Tuner -> _local_tuner (TunerInternal) -> _run_config, the RunConfig fit() uses."""
    from ray import tune
    from ray.tune.impl.tuner_internal import TunerInternal

    tuner = tune.Tuner(lambda config: None,
                       run_config=tune.RunConfig(name="compat", storage_path=str(tmp_path)))
    assert isinstance(tuner._local_tuner, TunerInternal)
    assert isinstance(tuner._local_tuner._run_config, tune.RunConfig)
    callbacks = [tune.Callback()]
    ray_compat.set_restored_callbacks(tuner, callbacks)
    assert tuner._local_tuner._run_config.callbacks is callbacks
    # fit() hands Tune the callbacks of that RunConfig
    assert "callbacks=self._run_config.callbacks" in inspect.getsource(TunerInternal)


def test_train_session_has_the_report_queue_the_trial_waits_on():
    from ray.train._internal import session

    assert inspect.signature(session.get_session).parameters == {}
    assert session.get_session() is None  # outside a trial
    assert ray_compat.train_report_queue() is None
    # set up empty by the session, filled by the Train controller's reports through it
    assert "self._inter_actor_queue: Optional[" in inspect.getsource(session._TrainSession.reset)
    assert callable(session._TrainSession._get_or_create_inter_actor_queue)
    from ray.util.queue import Queue

    assert callable(Queue.empty)


def test_ray_driver_messages_go_through_a_replaceable_print_function(monkeypatch):
    import ray._private.worker as ray_worker

    assert list(inspect.signature(ray_worker.print_to_stdstream).parameters) == ["data", "ignore_prefix"]
    assert _reads_global(ray_worker.listen_error_messages, "print_to_stdstream")
    printed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    ray_compat.filter_driver_messages(lambda data: None if "noise" in data["lines"][0] else data)
    ray_compat.filter_driver_messages(lambda data: None)  # a second install wraps nothing more
    ray_worker.print_to_stdstream({"lines": ["noise"]}, False)
    ray_worker.print_to_stdstream({"lines": ["kept"]}, False)
    assert printed == [{"lines": ["kept"]}]


def test_mlflow_event_prints_go_to_a_replaceable_stream(monkeypatch):
    import logging

    from mlflow.utils import logging_utils

    assert hasattr(logging_utils.MLFLOW_LOGGING_STREAM, "enabled")
    assert _reads_global(logging_utils.eprint, "MLFLOW_LOGGING_STREAM")
    monkeypatch.setattr(logging_utils, "MLFLOW_LOGGING_STREAM", logging_utils.MLFLOW_LOGGING_STREAM)
    handlers = logging.getLogger("mlflow").handlers
    streams = [(h, h.stream) for h in handlers if hasattr(h, "stream")]
    try:
        ray_compat.silence_mlflow_events()
        assert logging_utils.MLFLOW_LOGGING_STREAM.write("Created version '1'") == len("Created version '1'")
    finally:
        for handler, stream in streams:
            handler.setStream(stream)


def test_tune_checkpoint_deletes_and_forced_saves_go_through_replaceable_names():
    """Tune's checkpoint manager deletes through its module's `_delete_fs_path` (looked up at
    each call) and asks the experiment-state manager for a forced save per checkpoint;
    `checkpoint_deletes_to` replaces both while it runs and puts them back."""
    from ray.train._internal import checkpoint_manager
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    assert _reads_global(checkpoint_manager._CheckpointManager.register_checkpoint,
                         "_delete_fs_path")
    assert list(inspect.signature(checkpoint_manager._delete_fs_path).parameters) == ["fs", "fs_path"]
    assert list(inspect.signature(manager.on_trial_checkpoint).parameters) == ["self", "trial"]
    before = manager.on_trial_checkpoint, checkpoint_manager._delete_fs_path
    dropped = []
    with ray_compat.checkpoint_deletes_to(lambda fs, fs_path: dropped.append(fs_path)):
        checkpoint_manager._delete_fs_path(fs=None, fs_path="x")
        manager.on_trial_checkpoint(None, None)  # no forced save asked for
    assert dropped == ["x"]
    assert (manager.on_trial_checkpoint, checkpoint_manager._delete_fs_path) == before


def test_tune_saves_trials_before_asking_callbacks_for_their_state():
    """dlopt.runtime.checkpoints relies on this order inside one experiment-state save."""
    from ray.tune.execution.tune_controller import TuneController

    source = inspect.getsource(TuneController.save_to_dir)
    assert source.index("_get_trial_checkpoints") < source.index("self._callbacks.save_to_dir")


def test_driver_message_filter_is_undone_to_rays_own_function():
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    undo = ray_compat.filter_driver_messages(lambda data: None)
    try:
        assert ray_worker.print_to_stdstream is not original
        ray_compat.filter_driver_messages(lambda data: data)()  # a second install's undo: no-op
        assert getattr(ray_worker.print_to_stdstream, "dlopt_filtered", False)
    finally:
        undo()
    assert ray_worker.print_to_stdstream is original


def test_silenced_mlflow_events_are_undone_to_mlflows_stream_and_handlers():
    import logging

    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    handlers = [(h, h.stream) for h in logging.getLogger("mlflow").handlers if hasattr(h, "stream")]
    ray_compat.silence_mlflow_events()()
    assert logging_utils.MLFLOW_LOGGING_STREAM is stream
    assert [(h, h.stream) for h, _ in handlers] == handlers


def test_mlflows_explicit_tracking_uri_is_a_module_global_set_tracking_uri_sets(monkeypatch):
    """`explicit_tracking_uri` reads the name `mlflow.set_tracking_uri` writes; None is
    MLflow's own "none set" (its `_use_tracking_uri` puts None back the same way)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    assert ray_compat.explicit_tracking_uri() is None
    mlflow.set_tracking_uri("sqlite:////tmp/dlopt-compat.db")
    assert ray_compat.explicit_tracking_uri() == "sqlite:////tmp/dlopt-compat.db"
    mlflow.set_tracking_uri(None)
    assert ray_compat.explicit_tracking_uri() is None and "MLFLOW_TRACKING_URI" not in os.environ
    assert "old_tracking_uri = _tracking_uri" in inspect.getsource(utils._use_tracking_uri)
