"""Shared test helpers (a uniquely named module: `conftest` is ambiguous with
tests/integration/conftest.py)."""
import ast
import os
import subprocess
import sys
from pathlib import Path


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


class LossyProxy:
    """A loopback HTTP proxy in front of a real server, for faults a stopped server cannot
    time: `lose(path_part, n)` lets the next n matching requests reach the server, which
    answers, then drops the connection before the reply (a server that died right after it
    took the request); `outage_after(path_part, k, seconds)` refuses every request for
    `seconds` once k more matching requests went through. One request per connection
    (`Connection: close` both ways), so no HTTP body parsing is needed. Stop it with `close`."""

    def __init__(self, upstream_port: int):
        import collections
        import socket
        import threading

        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: collections.Counter = collections.Counter()  # path -> requests forwarded
        self.lost: collections.Counter = collections.Counter()  # path -> replies dropped
        self.refused = 0
        self._lose: dict[str, int] = {}
        self._outage: list = []  # [path part, requests left, seconds]
        self._down_until = 0.0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, path_part: str, n: int = 1) -> None:
        with self._lock:
            self._lose[path_part] = n

    def outage_after(self, path_part: str, k: int, seconds: float) -> None:
        with self._lock:
            self._outage = [path_part, k, seconds]

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _close_header(head: bytes) -> bytes:
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join([lines[0], b"Connection: close", *lines[1:]])

    def _handle(self, conn) -> None:
        import socket
        import threading
        import time

        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            with self._lock:
                if time.monotonic() < self._down_until:
                    self.refused += 1
                    return  # closed unanswered: the server is away
                lose = next((p for p, n in self._lose.items() if p in path and n > 0), None)
                if lose:
                    self._lose[lose] -= 1
                if self._outage and self._outage[0] in path:
                    self._outage[1] -= 1
                    if self._outage[1] < 0:
                        self._down_until = time.monotonic() + self._outage[2]
                        self._outage = []
                        self.refused += 1
                        return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                return  # the server itself is stopped: the caller sees a refused request
            with up:
                up.sendall(self._close_header(head) + b"\r\n\r\n" + rest)

                def pump():  # the rest of the request body, as the client sends it
                    try:
                        while chunk := conn.recv(65536):
                            up.sendall(chunk)
                    except OSError:
                        pass

                threading.Thread(target=pump, daemon=True).start()
                reply = b""
                while chunk := up.recv(65536):
                    reply += chunk
            with self._lock:
                self.seen[path] += 1
                if lose:
                    self.lost[path] += 1
                    return  # the server took it and answered; the answer never arrives
            rhead, _, body = reply.partition(b"\r\n\r\n")
            conn.sendall(self._close_header(rhead) + b"\r\n\r\n" + body)


def mlflow_server(db, artifacts, port: int, log, timeout: float = 120.0):
    """A real `mlflow server` on 127.0.0.1:port (SQLite store), up and healthy; stop it by
    its own process group (`os.killpg(proc.pid, SIGKILL)`)."""
    import time
    import urllib.request

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false",
                                 # no background job runner (7 extra processes on 2 cores)
                                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited ({proc.returncode}); see {log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("mlflow server did not come up")


def raw_digits_val(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2):
    """The validation rows of a digits run as sklearn returns them (0-16, float64), with their
    labels: what a registered model takes (its input transform is inside it)."""
    import torch
    from sklearn.datasets import load_digits

    from dlopt.ml.splits import split_indices

    bunch = load_digits()
    _, val, _ = split_indices(bunch.target, val_fraction, test_fraction, seed, True)
    return torch.from_numpy(bunch.data[val]), torch.from_numpy(bunch.target[val])


def sweep_plan(sweep_name: str, spec_json: dict = None, trials: int = 1):
    """A Plan for tests that open a parent run by hand (`Tracker.start_parent`): named
    `sweep_name`, carrying `spec_json` as given, with `trials` trials and no domains."""
    from dataclasses import replace

    from dlopt import Experiment
    from dlopt.spec.plan import make_plan

    return replace(make_plan(Experiment(name="t"), cluster_cpus=1), sweep_name=sweep_name,
                   spec_json={"search": {}} if spec_json is None else spec_json,
                   trials=trials, domains={})


# --- names in platform/dlopt, read from the source (no import): docs and benchmarks cite them
PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "dlopt"


def module_file(parts: list[str]) -> Path | None:
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(tree: ast.Module | ast.ClassDef) -> dict[str, ast.AST]:
    """Names a module (or class body) defines at its top level, with their defining node."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def resolve(dotted: str) -> bool:
    """`dlopt.pkg.module[.Name[.attr]]` names a module, a top-level name in it, or a name in
    a class it defines."""
    parts = dotted.split(".")[1:]
    for cut in range(len(parts), -1, -1):
        path = module_file(parts[:cut])
        if path is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        names = top_level_names(ast.parse(path.read_text()))
        if rest[0] not in names:
            return False
        if len(rest) > 1 and isinstance(names[rest[0]], ast.ClassDef):
            return rest[1] in top_level_names(names[rest[0]])
        return True
    return False
