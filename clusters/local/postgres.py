"""A PostgreSQL server for MLflow's tracking store, on loopback, in a directory of its own.

    python clusters/local/postgres.py up   DATA_PARENT   # prints the SQLAlchemy URI
    python clusters/local/postgres.py down DATA_PARENT

Debian's `postgresql` package (binaries under /usr/lib/postgresql/N/bin): `initdb` a fresh
cluster with one trusted local user `dlopt` and a database `mlflow`, listening on 127.0.0.1
only, on a free port; `pg_ctl` starts and stops exactly that cluster. PostgreSQL refuses to
run as root: as root the cluster belongs to the `postgres` system user (runuser). MLflow
reaches it through psycopg 3: `postgresql+psycopg://dlopt@127.0.0.1:PORT/mlflow`.
Used by clusters/local/cluster.py (`up --mlflow-db postgres`) and by
tests/integration/test_postgres_store.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HOST = "127.0.0.1"
USER, DB = "dlopt", "mlflow"
STATE = "postgres.json"


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install postgresql")


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def up(parent: Path, port: int | None = None, durable: bool = True) -> dict:
    """initdb + start a cluster for `parent`; returns its state (uri, port, dir), also written
    to parent/postgres.json. As root the server's files live in a /tmp directory owned by the
    postgres user (it may not reach `parent`), removed by `down`.
    durable=False: fsync off (tests: a crash may lose the store, never the case for users)."""
    parent.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    home = Path(tempfile.mkdtemp(prefix="dlpg-", dir="/tmp")) if root else parent
    if root:
        home.chmod(0o700)
        shutil.chown(home, "postgres")
    data, sockets, log = home / "pgdata", home / "pgsock", home / "postgres.log"
    port = port or free_port()
    state = {"port": port, "dir": str(home), "temp": root,
             "uri": f"postgresql+psycopg://{USER}@{HOST}:{port}/{DB}"}
    (parent / STATE).write_text(json.dumps(state))
    b = bindir()
    run = lambda cmd: subprocess.run(_as_owner(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run(["mkdir", "-p", str(sockets)])
    run([str(b / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
    options = f"-c listen_addresses={HOST} -p {port} -k {sockets}" + ("" if durable else " -c fsync=off")
    run([str(b / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
    created = subprocess.run([str(b / "createdb"), "-h", HOST, "-p", str(port), "-U", USER, DB],
                             capture_output=True, text=True)
    if created.returncode:
        down(parent)
        raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
    return state


def down(parent: Path) -> None:
    """Stop the cluster `up` started for `parent` (fast shutdown); a /tmp home is removed."""
    path = parent / STATE
    if not path.exists():
        return
    state = json.loads(path.read_text())
    data = Path(state["dir"]) / "pgdata"
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_owner([str(bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                  "stop"]), capture_output=True, text=True)
    if state.get("temp"):
        shutil.rmtree(state["dir"], ignore_errors=True)
    path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("parent", type=Path)
    args = ap.parse_args()
    if args.action == "up":
        print(up(args.parent.resolve())["uri"])
    else:
        down(args.parent.resolve())


if __name__ == "__main__":
    sys.exit(main())
