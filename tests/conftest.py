import os

# Telemetry off everywhere (tests and the Ray workers they start inherit this).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A hermetic session: the tests, and every dlopt, Ray and MLflow process they start, use the
# session's own HOME (~/dlopt, ~/ray_results, ~/.ray) and Ray temp dir (RAY_TMPDIR: the
# sessions and the `ray_current_cluster` file an address-less Ray looks for), never the
# user's, and no tracking store or cluster the caller's shell points at; so the suite passes
# beside another `dlopt run`, a Ray cluster or an `mlflow server` on the machine (issue 30).
# A short path under /tmp: Ray's socket paths must stay under 107 bytes. The dataset cache is
# the session's too (dlopt.ml.data.cache_dir; the tests' datasets are built locally).
SESSION_DIR = Path(tempfile.mkdtemp(prefix="dlopt-t-", dir="/tmp"))
os.environ["DLOPT_CACHE_DIR"] = str(SESSION_DIR / "cache")
(SESSION_DIR / "home").mkdir()
os.environ["HOME"] = str(SESSION_DIR / "home")
os.environ["RAY_TMPDIR"] = str(SESSION_DIR)  # Ray's temp dir: $RAY_TMPDIR/ray
for _outer in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
    os.environ.pop(_outer, None)


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


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

