"""Memory of a streamed source larger than a worker's memory (issue 27): a Parquet dataset on
disk at least 3x the Ray `memory` each worker reserves trains 2 epochs with 2 DDP workers;
peak RSS of each worker and of the driver, and every training row seen once per epoch.

What runs:
- the data: `--gb` GB of Parquet under a cache folder in /tmp (made once, reused while its
  manifest matches): `train/` with float32 rows of `--features` values and an int64 label
  (4 classes, the argmax of values 1-4, so there is something to learn), written one row
  group at a time (the generator holds one row group), uncompressed; `val/` a small file.
  Value 0 of each training row is its row id (exact in float32 below 2**24 rows): what the
  count reads;
- the run: a real `dlopt run SPEC` (the CLI, in a child process: the driver) of a generated
  1-trial spec: `Data(source=Source(format="parquet", path=..., features="x"))`, an mlp,
  2 DDP workers with `Resources(memory_per_worker_gb=--worker-gb)` (Ray's `memory`
  resource, docs/architecture.md, "GPU resources"), `--epochs` epochs;
- the count: a `sitecustomize` module put on the PYTHONPATH of that run (every Ray process
  inherits it) wraps `dlopt.runtime.streaming.worker_datasets` on the Train workers only
  when DLOPT_BENCH_ROWS is set: each rank's training batches of each epoch, as the loop
  receives them (raw rows, before the transform), add 1 to a uint8 count per row id, saved
  per (rank, epoch); every id must be counted exactly once per epoch over both ranks. The
  counter holds one byte per training row (rows / 2**20 MiB) in each worker;
- the memory: a thread polls /proc/PID/status of the driver and of every process under it
  (Ray's raylet, GCS, the Tune trial, the Train controller and workers, Ray Data's task
  workers) every `--poll` s: VmHWM (the kernel's peak RSS, exact between polls), and the
  largest sampled RssAnon (private memory; RSS also counts pages of Ray's shared object store
  a process has mapped) and RssShmem. Ray's `memory` resource is a reservation Ray schedules
  by, not an enforced limit: the figures say what the workers actually held.

    python benchmarks/streaming_memory.py [--gb 6] [--worker-gb 1.863] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CLASSES = 4
HOOK = '''
"""benchmarks/streaming_memory.py's row counter (only where DLOPT_BENCH_ROWS is set)."""
import importlib.abc
import importlib.util
import os
import sys


def _patch(streaming):
    import numpy as np

    inner_make = streaming.worker_datasets
    out, total = os.environ["DLOPT_BENCH_ROWS"], int(os.environ["DLOPT_BENCH_TOTAL"])

    def worker_datasets(spec, shape, transform, train, val, test=None):
        import ray.train

        made = inner_make(spec, shape, transform, train, val, test)
        rank = ray.train.get_context().get_world_rank()
        batches = made.train.batches

        def counted(batch_size, epoch=0):
            seen = np.zeros(total, dtype=np.uint8)
            for x, y in batches(batch_size, epoch):
                ids = x[:, 0].numpy().astype(np.int64)
                np.add.at(seen, ids, 1)
                yield x, y
            np.save(os.path.join(out, f"rank{rank}-epoch{epoch}.npy"), seen)

        made.train.batches = counted
        return made

    streaming.worker_datasets = worker_datasets


class _After(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "dlopt.runtime.streaming":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("DLOPT_BENCH_ROWS"):
    sys.meta_path.insert(0, _After())
'''

SPEC = '''from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.spec import Source

experiment = Experiment(
    name="streaming-memory", seed=0, epochs={epochs},
    data=Data(batch_size={batch}, source=Source(format="parquet", path={path!r}, features="x",
                                                num_classes={classes})),
    model=Model(arch="mlp", hidden=[64]), optimizer=Optimizer(name="adam", lr=1e-3),
    search=Search(algorithm="random", num_samples=1),
    resources=Resources(num_workers=2, memory_per_worker_gb={worker_gb}, max_failures=0),
    tracking=Tracking(experiment="streaming-memory", report_every=1))
'''


# ---------------------------------------------------------------- the dataset
def make_dataset(root: Path, gb: float, features: int, group_rows: int, groups_per_file: int,
                 val_rows: int) -> dict:
    """The Parquet folder (reused when its manifest matches); returns the manifest."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_bytes = features * 4 + 8
    groups = max(1, int(gb * 1e9 / (row_bytes * group_rows) + 0.999))
    rows = groups * group_rows
    want = {"features": features, "group_rows": group_rows, "groups": groups, "rows": rows,
            "groups_per_file": groups_per_file, "val_rows": val_rows, "version": 1}
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("want") == want:
        return json.loads(manifest.read_text())
    if rows >= 2**24:
        raise SystemExit(f"{rows} rows: ids above 2**24 are not exact in float32; fewer rows")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    rng = np.random.default_rng(0)
    schema = pa.schema([("x", pa.list_(pa.float32(), features)), ("label", pa.int64())])

    def table(start: int, n: int, ids: bool) -> pa.Table:
        x = rng.standard_normal((n, features), dtype=np.float32)
        label = x[:, 1:1 + CLASSES].argmax(1).astype(np.int64)
        if ids:
            x[:, 0] = np.arange(start, start + n, dtype=np.float32)
        return pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), features),
                         "label": label}, schema=schema)

    t0, start, writer = time.perf_counter(), 0, None
    for g in range(groups):
        if g % groups_per_file == 0:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(root / "train" / f"part-{g // groups_per_file:04d}.parquet",
                                      schema, compression="none")
        writer.write_table(table(start, group_rows, True), row_group_size=group_rows)
        start += group_rows
    writer.close()
    pq.write_table(table(0, val_rows, False), root / "val" / "part-0000.parquet",
                   compression="none", row_group_size=val_rows)
    disk = sum(f.stat().st_size for f in (root / "train").glob("*.parquet"))
    made = {"want": want, "train_bytes": disk, "seconds_to_write": time.perf_counter() - t0}
    manifest.write_text(json.dumps(made))
    return made


# ---------------------------------------------------------------- memory sampling
def status(pid: int) -> dict:
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every process under `root` (parent ids from /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kind(cmd: str, is_driver: bool) -> str:
    """What a process is, from its title (Ray sets `ray::Class.method` on its workers; a
    worker's command line before that names the raylet's socket, so titles come first)."""
    if is_driver:
        return "driver (dlopt run)"
    for needle, name in (("RayTrainWorker", "Train worker"), ("TrainController", "Train controller"),
                         ("ImplicitFunc", "Tune trial"), ("MapBatches", "Ray Data task"),
                         ("SplitCoordinator", "Ray Data split coordinator"),
                         ("ray::IDLE", "idle Ray worker"), ("ray::", "other Ray actor/task")):
        if needle in cmd:
            return name
    if "default_worker.py" in cmd:
        return "Ray worker starting"
    program = cmd.split(" ", 1)[0]
    return "raylet" if "raylet" in program else "GCS" if "gcs_server" in program else "other"


class Sampler(threading.Thread):
    """Polls the driver and every process under it; keeps per-pid peaks and titles."""

    def __init__(self, root_pid: int, period: float):
        super().__init__(daemon=True)
        self.root, self.period, self.stop = root_pid, period, threading.Event()
        self.peaks: dict[int, dict] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in [self.root, *descendants(self.root)]:
                s = status(pid)
                if not s:
                    continue
                peak = self.peaks.setdefault(pid, {"pid": pid, "kinds": [], "cmd": ""})
                cmd = cmdline(pid)
                k = kind(cmd, pid == self.root)
                if k not in peak["kinds"]:
                    peak["kinds"].append(k)
                if "RayTrainWorker" in cmd or not peak["cmd"]:
                    peak["cmd"] = cmd[:160]
                for key, value in s.items():
                    peak[key] = max(peak.get(key, 0), value)
            self.stop.wait(self.period)


# ---------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=6.0, help="training Parquet on disk, GB (1e9 B)")
    ap.add_argument("--worker-gb", type=float, default=2e9 / 2**30,
                    help="Resources(memory_per_worker_gb=...), GiB: Ray's memory resource per "
                    "worker (default 2 GB = 1.863 GiB)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--group-rows", type=int, default=16384)
    ap.add_argument("--groups-per-file", type=int, default=16)
    ap.add_argument("--val-rows", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between samples")
    ap.add_argument("--cache", default="/tmp/dlopt-bench-streaming-memory")
    args = ap.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    root = Path(args.cache) / f"{args.gb:g}gb-{args.features}f"  # reused while the same
    with common.Timer() as t:
        made = make_dataset(root, args.gb, args.features, args.group_rows, args.groups_per_file,
                            args.val_rows)
    want = made["want"]
    rows, disk = want["rows"], made["train_bytes"]
    print(f"dataset {root}: {rows} training rows, {disk / 1e9:.2f} GB on disk "
          f"({disk / (args.worker_gb * 2**30):.2f}x a worker's {args.worker_gb:g} GiB); "
          f"ready in {t.seconds:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="dlopt-memory-") as tmp:
        tmp = Path(tmp)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(HOOK)
        (tmp / "seen").mkdir()
        spec = tmp / "memory_spec.py"
        spec.write_text(SPEC.format(epochs=args.epochs, batch=args.batch_size, path=str(root),
                                    classes=CLASSES, worker_gb=args.worker_gb))
        env = {**os.environ, "DLOPT_BENCH_ROWS": str(tmp / "seen"),
               "DLOPT_BENCH_TOTAL": str(rows),
               "PYTHONPATH": os.pathsep.join([str(tmp / "hook"), str(common.ROOT / "platform"),
                                             os.environ.get("PYTHONPATH", "")]),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
        cmd = [sys.executable, "-m", "dlopt", "run", str(spec), "--storage",
               str(tmp / "ray_results")]
        log = tmp / "run.log"
        with open(log, "w") as out, common.Timer() as run_t:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
            sampler = Sampler(proc.pid, args.poll)
            sampler.start()
            code = proc.wait()
            sampler.stop.set()
            sampler.join()
        text = log.read_text()
        if code != 0:
            print(text[-6000:])
            raise SystemExit(f"dlopt run exited {code}")
        counts = {}
        for epoch in range(args.epochs):
            per_rank = [tmp / "seen" / f"rank{r}-epoch{epoch}.npy" for r in range(2)]
            import numpy as np

            missing = [p.name for p in per_rank if not p.exists()]
            if missing:
                raise SystemExit(f"no counts {missing}: the hook did not run on the workers")
            seen = sum(np.load(p).astype(np.int64) for p in per_rank)
            counts[epoch + 1] = {"rows": rows, "once": int((seen == 1).sum()),
                                 "never": int((seen == 0).sum()), "twice_or_more": int((seen > 1).sum()),
                                 "per_rank": [int(np.load(p).sum()) for p in per_rank]}
        summary = text[-3000:]
    peaks = sorted(sampler.peaks.values(), key=lambda p: -p.get("VmHWM", 0))
    workers = [p for p in peaks if "Train worker" in p["kinds"]]
    driver = next(p for p in peaks if p["pid"] == proc.pid)
    mib = 2**20

    def row(p: dict, name: str) -> dict:
        return {"process": name, "pid": p["pid"], "peak_rss_mib": p.get("VmHWM", 0) / mib,
                "peak_anon_mib": p.get("RssAnon", 0) / mib,
                "peak_shmem_mib": p.get("RssShmem", 0) / mib}

    rows_out = [row(driver, "driver (dlopt run)")]
    rows_out += [row(w, f"Train worker {i}") for i, w in enumerate(workers)]
    others = [p for p in peaks if p is not driver and p not in workers]
    rows_out += [row(p, "/".join(p["kinds"])) for p in others[:8]]
    every_once = all(c["once"] == rows for c in counts.values())
    limit_mib = args.worker_gb * 1024
    load_end = [round(x, 2) for x in os.getloadavg()]
    worker_peaks = ", ".join(f"{w.get('VmHWM', 0) / mib:.0f} MiB" for w in workers)
    md = common.table(rows_out, ["process", "pid", "peak_rss_mib", "peak_anon_mib",
                                 "peak_shmem_mib"])
    md += (f"\n\nDataset: {rows} training rows x {args.features} float32 + int64 label, "
           f"{disk / 1e9:.2f} GB of Parquet on disk = {disk / (args.worker_gb * 2**30):.2f}x "
           f"the {args.worker_gb:g} GiB of Ray `memory` each worker reserves; {args.epochs} "
           f"epochs with 2 DDP workers in {run_t.seconds:.0f} s (the whole `dlopt run`).  \n"
           f"Every training row once per epoch: {every_once} "
           f"({'; '.join(f'epoch {e}: {c}' for e, c in counts.items())}).  \n"
           f"Peak RSS per worker (VmHWM): "
           f"{worker_peaks} against the "
           f"{limit_mib:.0f} MiB reserved; driver {driver.get('VmHWM', 0) / mib:.0f} MiB. "
           f"Load average at the start {load_start}, at the end {load_end}.\n")
    common.write("streaming_memory", "Streamed Parquet larger than a worker's memory "
                 f"({disk / 1e9:.1f} GB, 2 workers x {args.worker_gb:g} GiB)",
                 {"args": vars(args), "dataset": {"path": str(root), **made},
                  "processes": rows_out, "all_processes": peaks, "counts": counts,
                  "every_row_once_per_epoch": every_once, "run_seconds": run_t.seconds,
                  "load_avg_at_start": load_start, "load_avg_at_end": load_end,
                  "run_log_tail": summary}, md)
    if not every_once:
        raise SystemExit("a training row was not seen exactly once in an epoch")


if __name__ == "__main__":
    main()
