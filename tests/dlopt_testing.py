"""Shared test helpers (a uniquely named module: `conftest` is ambiguous with tests/integration/conftest.py)."""
import os
import sys


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real `dlopt` console entry in a fresh process."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
