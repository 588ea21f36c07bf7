"""dlopt.runtime.checkpoints: a checkpoint Tune drops is deleted only LAG state saves later
(or once fit has returned). Real directories on a local pyarrow filesystem; no Ray cluster."""
import pickle

import pyarrow.fs

from dlopt.runtime.checkpoints import LAG, DroppedCheckpoints


def _checkpoint(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    (path / "model.pt").write_bytes(b"w")
    return path


def test_a_dropped_checkpoint_outlives_the_saves_that_could_name_it(tmp_path):
    fs = pyarrow.fs.LocalFileSystem()
    dropped = DroppedCheckpoints()
    first = _checkpoint(tmp_path, "checkpoint_000000")
    dropped.drop(fs=fs, fs_path=str(first))
    assert first.exists() and dropped.pending == 1
    for _ in range(LAG):
        assert dropped.get_state() is None  # nothing saved for this callback
        assert first.exists()
    second = _checkpoint(tmp_path, "checkpoint_000001")
    dropped.drop(fs=fs, fs_path=str(second))
    dropped.get_state()
    assert not first.exists() and second.exists()
    assert dropped.deleted == 1 and dropped.pending == 1


def test_after_fit_every_dropped_checkpoint_goes(tmp_path):
    fs = pyarrow.fs.LocalFileSystem()
    dropped = DroppedCheckpoints()
    paths = [_checkpoint(tmp_path, f"checkpoint_{i:06d}") for i in range(3)]
    dropped.drop(fs=fs, fs_path=str(paths[0]))
    dropped.get_state()
    dropped.drop(fs=fs, fs_path=str(paths[1]))
    dropped.delete_all()
    assert not paths[0].exists() and not paths[1].exists() and paths[2].exists()
    assert dropped.pending == 0 and dropped.deleted == 2


def test_what_waits_is_not_pickled_into_tuner_pkl(tmp_path):
    dropped = DroppedCheckpoints()
    dropped.drop(fs=pyarrow.fs.LocalFileSystem(), fs_path=str(_checkpoint(tmp_path, "c")))
    assert pickle.loads(pickle.dumps(dropped)).pending == 0
