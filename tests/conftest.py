import os

# Telemetry off everywhere (tests and the Ray workers they start inherit this).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    return ROOT


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real `dlopt` console entry in a fresh process."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
