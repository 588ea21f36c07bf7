"""Shared test helpers (a uniquely named module: `conftest` is ambiguous with tests/integration/conftest.py)."""
import os
import sys


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real `dlopt` console entry in a fresh process."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a gloo process group or a test server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo_ranks(code: str, *args: str, world: int = 2, timeout: float = 300) -> list[str]:
    """Run `python -c code RANK *args` as `world` processes that can form a gloo group
    (MASTER_ADDR/MASTER_PORT on 127.0.0.1); fail on any rank's error; each rank's stdout."""
    import subprocess

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [out for out, _ in outs]
