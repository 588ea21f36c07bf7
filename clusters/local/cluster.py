"""A real multi-node Ray cluster and an MLflow server on one machine, loopback only.

    python clusters/local/cluster.py up   STATE_DIR [--workers 1] [--head-cpus 2] [--worker-cpus 2]
                                          [--mlflow-db sqlite|postgres]
    python clusters/local/cluster.py down STATE_DIR

Why a script rather than `ray start` by hand: several Ray nodes on one host must not share
any port (each node has its own raylet, object manager, dashboard agent, runtime-env agent
and metrics exporter), a host may already run other Ray clusters, and `ray stop` kills every
Ray process on the machine. So `up` picks free ports, gives the cluster its own temp dir and
its own auth token, starts each node as `ray start --block` in a new process group, and
records those pids; `down` ends exactly those process groups and nothing else.

`up` writes STATE_DIR/env.sh (source it to point `dlopt submit` / `ray job submit` at the
cluster and `dlopt run` at the MLflow server) and STATE_DIR/cluster.json (ports and pids).
The token lives in STATE_DIR/auth_token (mode 0600) and is found through
RAY_AUTH_TOKEN_PATH, so it never appears on a command line or in a log.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # postgres.py beside it

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Per-node ports that default to fixed numbers in Ray and would clash between nodes."""
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    args = []
    for flag in flags:
        args += [flag, str(free_port())]
    # 0/0: every worker process binds an OS-assigned port instead of Ray's shared default range.
    return args + ["--min-worker-port", "0", "--max-worker-port", "0"]


def ray_env(state: dict) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_path"],
            "RAY_USAGE_STATS_ENABLED": "0", "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def spawn(cmd: list[str], log: Path, env: dict) -> int:
    # A new session makes the pid a session id we own: the node's raylet, GCS, agents and
    # workers all stay in it, so `down` can find exactly them (see session_members).
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return proc.pid


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def alive_nodes(state: dict, token: str) -> int:
    body = json.loads(http_get(f"{state['dashboard']}/api/v0/nodes?limit=100", token))
    rows = body.get("data", {}).get("result", {}).get("result", [])
    return sum(r.get("state") == "ALIVE" for r in rows)


def wait_for(what: str, check, timeout_s: float, pids: list[int]) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        for pid in pids:
            if not pid_alive(pid):
                raise RuntimeError(f"{what}: process {pid} exited; see the logs in the state dir")
        try:
            if check():
                return
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s (last error: {last})")


def pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a later `down` call): fall back to signal 0
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def up(state_dir: Path, workers: int, head_cpus: int, worker_cpus: int, mlflow: bool,
       timeout_s: float = 90.0, shared_temp_dir: bool = False, mlflow_db: str = "sqlite") -> dict:
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    # One temp dir per node: on one host, nodes sharing a session dir would share the
    # runtime_env working_dir copies, and a worker node's agent would delete the package
    # the head's job driver still runs in. Ray's unix sockets live under it: keep it short.
    # `shared_temp_dir` (tests only) starts them as plain `ray start` on one host does.
    temp_dirs = [tempfile.mkdtemp(prefix="dlray-", dir="/tmp") for _ in range(1 + workers)]
    if shared_temp_dir:
        temp_dirs = [temp_dirs[0]] * (1 + workers)
    token_path = state_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    gcs_port, dash_port = free_port(), free_port()
    state = {"host": HOST, "temp_dirs": temp_dirs, "token_path": str(token_path),
             "gcs_address": f"{HOST}:{gcs_port}", "dashboard": f"http://{HOST}:{dash_port}",
             "pids": {}, "state_dir": str(state_dir)}
    write_state(state_dir, state)
    env = ray_env(state)
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
           "--node-ip-address", HOST, "--disable-usage-stats"]
    try:
        state["pids"]["head"] = spawn(
            ray + ["--temp-dir", temp_dirs[0], "--head", "--port", str(gcs_port), "--num-cpus", str(head_cpus), "--num-gpus", "0",
                   "--include-dashboard", "true", "--dashboard-host", HOST,
                   "--dashboard-port", str(dash_port), "--ray-client-server-port", str(free_port()),
                   *node_ports()], logs / "head.log", env)
        write_state(state_dir, state)
        token = token_path.read_text()
        wait_for("ray head", lambda: alive_nodes(state, token) >= 1, timeout_s,
                 [state["pids"]["head"]])
        for i in range(workers):
            state["pids"][f"worker{i}"] = spawn(
                ray + ["--temp-dir", temp_dirs[1 + i], "--address", state["gcs_address"],
                       "--num-cpus", str(worker_cpus),
                       "--num-gpus", "0", *node_ports()], logs / f"worker{i}.log", env)
            write_state(state_dir, state)
        wait_for(f"{workers} worker node(s)", lambda: alive_nodes(state, token) >= 1 + workers,
                 timeout_s, list(state["pids"].values()))
        if mlflow:
            port = free_port()
            artifacts = state_dir / "mlartifacts"
            state["mlflow"] = f"http://{HOST}:{port}"
            backend = f"sqlite:///{state_dir / 'mlflow.db'}"
            if mlflow_db == "postgres":  # clusters/local/postgres.py: its own dir, loopback
                import postgres  # beside this script

                state["postgres"] = str(state_dir / "postgres")
                write_state(state_dir, state)
                backend = postgres.up(Path(state["postgres"]))["uri"]
            state["pids"]["mlflow"] = spawn(
                [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                 "--workers", "1", "--backend-store-uri", backend,
                 "--artifacts-destination", str(artifacts)],
                logs / "mlflow.log", {**env, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"})
            write_state(state_dir, state)
            wait_for("mlflow server", lambda: http_get(f"{state['mlflow']}/health") == b"OK",
                     timeout_s, [state["pids"]["mlflow"]])
    except BaseException:
        down(state_dir)
        raise
    write_state(state_dir, state)
    (state_dir / "env.sh").write_text("".join(f"export {k}={v}\n" for k, v in client_env(state).items()))
    return state


def client_env(state: dict) -> dict[str, str]:
    """What a client needs: the job API address, the token's location, the MLflow server."""
    env = {"RAY_ADDRESS": state["dashboard"], "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": state["token_path"]}
    if "mlflow" in state:
        env["MLFLOW_TRACKING_URI"] = state["mlflow"]
    return env


def write_state(state_dir: Path, state: dict) -> None:
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=1))


def down(state_dir: Path, grace_s: float = 10.0) -> None:
    """End the sessions `up` started, nothing else: SIGTERM to every process in them, then
    SIGKILL to what is left after `grace_s`."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return
    state = json.loads(path.read_text())
    stop_sessions(list(state["pids"].values()), grace_s)
    if state.get("postgres"):  # after the MLflow server that used it
        import postgres

        postgres.down(Path(state["postgres"]))
        state.pop("postgres")
    for temp_dir in set(state.get("temp_dirs", [])):
        shutil.rmtree(temp_dir, ignore_errors=True)
    state["pids"] = {}
    write_state(state_dir, state)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) pids in session `sid`, read from /proc (Linux).

    A session, not a process group: Ray gives some worker processes their own group, but
    they stay in the session of the `ray start` we launched with start_new_session.
    """
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def stop_sessions(sids: list[int], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for sid in sids:
            for pid in session_members(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for sid in sids:
                pid_alive(sid)  # reap our own children (when `up` itself is stopping)
            if not any(session_members(sid) for sid in sids):
                return
            time.sleep(0.2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start head + worker nodes (+ MLflow server)")
    u.add_argument("state_dir", type=Path)
    u.add_argument("--workers", type=int, default=1)
    u.add_argument("--head-cpus", type=int, default=2)
    u.add_argument("--worker-cpus", type=int, default=2)
    u.add_argument("--no-mlflow", action="store_true")
    u.add_argument("--shared-temp-dir", action="store_true",
                   help="one Ray temp dir for all nodes, as plain `ray start` on one host (tests)")
    u.add_argument("--mlflow-db", choices=["sqlite", "postgres"], default="sqlite",
                   help="the MLflow server's store: SQLite file, or a PostgreSQL server "
                        "started here (clusters/local/postgres.py; many concurrent writers)")
    d = sub.add_parser("down", help="stop what `up` started in STATE_DIR")
    d.add_argument("state_dir", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "up":
        state = up(args.state_dir.resolve(), args.workers, args.head_cpus, args.worker_cpus,
                   not args.no_mlflow, shared_temp_dir=args.shared_temp_dir, mlflow_db=args.mlflow_db)
        print(f"ray dashboard / job API  {state['dashboard']}")
        if "mlflow" in state:
            print(f"mlflow server            {state['mlflow']}")
        print(f"client settings: source {args.state_dir / 'env.sh'}")
        print(f"stop: python {sys.argv[0]} down {args.state_dir}")
    else:
        down(args.state_dir.resolve())
        print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
