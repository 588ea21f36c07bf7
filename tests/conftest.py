import os

# Telemetry off everywhere (tests and the Ray workers they start inherit this).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _environ_per_module():
    """Give each test module the environment the session started with. An in-process sweep
    changes os.environ for good in ways a user's process would keep too (mlflow.set_tracking_uri
    exports MLFLOW_TRACKING_URI), and a later module's subprocesses (a `ray start` cluster, a
    job) would inherit it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def root() -> Path:
    return ROOT

