"""Shared helpers for the benchmark scripts: machine facts, timing fits, result files.

Benchmarks are plain scripts (not tests): each runs both sides in one process tree, prints a
table, writes JSON and a markdown section under benchmarks/results/ (committed).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "BENCHMARKS.md"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import torch

    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return {"nproc": os.cpu_count(), "ram_gib": ram, "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray_version,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def disk_sync_ms(directory: str, writes: int = 200) -> float:
    """Milliseconds per synchronous 4 KiB write in `directory` (`dd oflag=dsync`): what each
    fsync of a state save or a SQLite commit costs on this disk."""
    import subprocess
    import tempfile
    import time

    with tempfile.NamedTemporaryFile(dir=directory) as f:
        t0 = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={f.name}", "bs=4k", f"count={writes}",
                        "oflag=dsync"], check=True, capture_output=True)
        return round((time.perf_counter() - t0) * 1000 / writes, 3)


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b*x: b is the steady-state seconds per epoch, a the fixed part."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def write(name: str, title: str, payload: dict, markdown: str) -> Path:
    """JSON (committed) and its markdown section under benchmarks/results/; printed too.

    BENCHMARKS.md is not appended to: its "Current results" table is edited by hand from
    these files, one row per figure, citing the JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    info = {"machine": machine(), "date": stamp.isoformat(timespec="seconds"), "command": command(),
            "commit": git_commit()}
    path = RESULTS / f"{name}-{stamp:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps({**info, **payload}, indent=1, default=str))
    m = info["machine"]
    section = (f"## {title} ({stamp:%Y-%m-%d %H:%M} UTC)\n\n"
               f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, torch {m['torch']}, "
               f"Ray {m['ray']}; load average at start {m['load_avg_at_start']}.  \n"
               f"Command: `{info['command']}` at commit {info['commit']}  \n"
               f"JSON: `{path.relative_to(ROOT)}`\n\n" + markdown.rstrip() + "\n")
    path.with_suffix(".md").write_text(section)
    print(section)
    print(f"wrote {path} and {path.with_suffix('.md').name}; copy the figures into {REPORT.name}")
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


class CpuGroup:
    """A cgroup v1 `cpu` group the benchmark's processes run in (Linux, root): `cpus` caps
    them at that many CPUs' worth of time per period (a slower machine of the same core
    count, for sweep_scale's "other kind of machine"); `shares` weighs them against the
    machine's other processes (other work on a shared box), 1024 being everyone's default.
    Hand-written: neither Ray nor the stdlib starts a process in a cgroup; `systemd-run
    --scope` would, where systemd runs as init (not in these containers)."""

    ROOT = Path("/sys/fs/cgroup/cpu")

    def __init__(self, name: str, cpus: float | None = None, shares: int | None = None):
        if not (self.ROOT / "cpu.cfs_quota_us").exists():
            raise SystemExit(f"no cgroup v1 cpu controller at {self.ROOT}: run without "
                             "--cpu-quota/--cpu-shares")
        self.path = self.ROOT / f"{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        period = int((self.path / "cpu.cfs_period_us").read_text())
        (self.path / "cpu.cfs_quota_us").write_text(str(int(cpus * period) if cpus else -1))
        if shares:
            (self.path / "cpu.shares").write_text(str(shares))
        self.facts = {"cpu_quota_cpus": cpus, "cpu_shares": shares}

    def enter(self) -> None:
        """preexec_fn: the child process (and what it starts) runs in the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            (self.ROOT / "cgroup.procs").write_text(pid)  # leftovers back to the root group
        self.path.rmdir()
