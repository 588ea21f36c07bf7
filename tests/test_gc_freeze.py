"""dlopt.runtime.worker.freeze_start_up_objects: the objects alive when a Ray trial or worker
starts its loop leave the collector's reach (no full collection walks them mid-epoch), and
garbage made afterwards is still collected."""
import gc
import weakref

from dlopt.runtime.worker import freeze_start_up_objects


class Cycle:
    pass


def test_start_up_objects_frozen_and_later_garbage_still_collected():
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > 0
        later = Cycle()
        later.self = later  # a reference cycle: only the collector frees it
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
