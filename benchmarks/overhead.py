"""Platform overhead and report cost: one model through a bare loop and through dlopt.

Both sides train the same spec (digits, 64-512-10 MLP, Adam, seed 0, N epochs):
- bare: `dlopt.train.loop.fit` called in this process with a list-collecting `report`
  (no Ray, no MLflow, no checkpoint files);
- dlopt: `dlopt.driver.sweep.run` of the same spec as a 1-trial sweep (1 worker, then 2 workers),
  local Ray started in this process, SQLite MLflow in a temp dir.

Timing: each epoch's end time, stamped in the loop (`epoch_end_time`; the MLflow metric
timestamp the driver writes for that epoch, also when reports batch epochs), is fitted as
t = a + b * epoch. b is the steady-state seconds per epoch, a the fixed start-up. For
dlopt, `sweep start-up` is call -> trial start (Ray + MLflow parent), `trial start-up` is
trial start -> the fitted epoch-0 point. A 2-worker run is compared with the same loop in
2 plain processes with gloo DDP (no Ray) as well as with the 1-process loop.
Report cost is the median `report_seconds` the worker measured around `ray.train.report`.

    python benchmarks/overhead.py [--epochs 20] [--workers 1 2] [--poll 0.1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGETS = {"ratio": 1.05, "trial_startup_1": 3.0, "trial_startup_2": 8.0, "report_s": 0.05}


def make_spec(epochs: int, workers: int, hidden=(512,), lr=1e-3, name="bench-overhead",
              in_trial: bool = True):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking

    return Experiment(
        name=name, seed=0, epochs=epochs,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="mlp", hidden=list(hidden)),
        optimizer=Optimizer(name="adam", lr=lr),
        search=Search(algorithm="random", num_samples=1),
        resources=Resources(num_workers=workers, in_trial=in_trial),
        tracking=Tracking(experiment="bench"),
    )


def bare(spec) -> dict:
    """The plain loop in this process: epoch arrival times relative to the call.

    One torch thread, as a Ray worker or trial with one CPU gets (Ray sets OMP_NUM_THREADS
    to the task's CPUs); two threads on a shared 2-core machine also thrash.
    """
    import torch

    from dlopt.train.loop import fit

    torch.set_num_threads(1)

    arrivals: list[tuple[int, float]] = []
    compute: list[float] = []
    t0 = time.perf_counter()

    def report(metrics, write=None):
        if not metrics.get("final"):
            arrivals.append((metrics["epoch"], time.perf_counter() - t0))
            compute.append(metrics["epoch_seconds"])

    state = fit(spec, report)
    total = time.perf_counter() - t0
    a, b = common.line_fit([e for e, _ in arrivals], [t for _, t in arrivals])
    return {"side": "bare loop", "workers": 1, "total_s": total, "startup_s": a, "epoch_s": b,
            "compute_s": statistics.median(compute),
            "val_accuracy": state.metrics.get("val_accuracy")}


def _bare_ddp_rank(rank: int, world: int, port: int, spec_json: dict, t0: float, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dlopt.spec import Experiment
    from dlopt.train.loop import fit

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    ends, compute = [], []

    def report(metrics, write=None):
        if not metrics.get("final"):
            ends.append((metrics["epoch"], metrics["epoch_end_time"] - t0))
            compute.append(metrics["epoch_seconds"])

    state = fit(Experiment.model_validate(spec_json), report, rank=rank, world=world,
                wrap=DistributedDataParallel)
    dist.destroy_process_group()
    if rank == 0:
        out.put({"ends": ends, "compute": compute, "total": time.time() - t0,
                 "val_accuracy": state.metrics.get("val_accuracy")})


def bare_ddp(spec, world: int = 2) -> dict:
    """The same loop as `world` plain processes (torch.multiprocessing + gloo + DDP), no Ray:
    the fair baseline for a multi-worker trial, whose epochs also pay DDP's all-reduces."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    t0 = time.time()
    procs = [ctx.Process(target=_bare_ddp_rank,
                         args=(r, world, port, spec.model_dump(mode="json"), t0, out))
             for r in range(world)]
    for proc in procs:
        proc.start()
    res = out.get()
    for proc in procs:
        proc.join()
    a, b = common.line_fit([e for e, _ in res["ends"]], [t for _, t in res["ends"]])
    return {"side": "bare DDP (processes)", "workers": world, "total_s": res["total"],
            "startup_s": a, "epoch_s": b, "compute_s": statistics.median(res["compute"]),
            "val_accuracy": res["val_accuracy"]}


def _empty_train_fn(config: dict) -> None:
    import json

    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps({"entered": time.time()}))


def ray_train_alone(workers: int) -> dict:
    """Ray Train's own start-up, without dlopt: a TorchTrainer whose train function only
    writes the time it was entered (local Ray with the CPUs a dlopt sweep would start)."""
    import json

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dlopt.driver.environment import FAST_POLL_ENV

    os.environ.update({k: v for k, v in FAST_POLL_ENV.items() if k not in os.environ})
    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", runtime_env={"env_vars": dict(FAST_POLL_ENV)})
    try:
        with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
            out = Path(work) / "entered.json"
            t0 = time.time()
            TorchTrainer(_empty_train_fn, train_loop_config={"out": str(out)},
                         scaling_config=ScalingConfig(num_workers=workers),
                         run_config=RunConfig(name="empty", storage_path=work)).fit()
            total = time.time() - t0
            entered = json.loads(out.read_text())["entered"] - t0
    finally:
        ray.shutdown()
    return {"side": "Ray TorchTrainer alone (empty train fn)", "workers": workers,
            "total_s": total, "startup_s": entered}


def through_dlopt(spec, poll: str | None) -> dict:
    from mlflow.tracking import MlflowClient

    from dlopt.driver.sweep import run

    if poll is not None:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll
    with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        t_call = time.time()
        result = run(spec, tracking_uri=uri, storage=f"{work}/ray_results", progress=False)
        t_end = time.time()
        client = MlflowClient(uri)
        trial = result.trials[0]
        child = client.get_run(trial.run_id)
        t_trial = child.info.start_time / 1000
        hist = sorted(client.get_metric_history(trial.run_id, "epoch_seconds"), key=lambda m: m.step)
        epochs = [m.step for m in hist]
        times = [m.timestamp / 1000 - t_trial for m in hist]
        report_s = [m.value for m in client.get_metric_history(trial.run_id, "report_seconds")]
        compute_s = statistics.median(m.value for m in hist)
        a, b = common.line_fit(epochs, times)
        path = "in-trial" if spec.resources.num_workers == 1 and spec.resources.in_trial \
            else "TorchTrainer"
        return {"side": f"dlopt.driver.sweep.run ({path})", "workers": spec.resources.num_workers,
                "poll_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
                "total_s": t_end - t_call, "sweep_startup_s": t_trial - t_call,
                "startup_s": a, "epoch_s": b, "compute_s": compute_s,
                "tail_s": t_end - (t_trial + times[-1]),
                "report_s": statistics.median(report_s) if report_s else None,
                "report_max_s": max(report_s) if report_s else None,
                "val_accuracy": trial.metrics.get("val_accuracy"), "status": trial.status}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--poll", nargs="+", default=[None],
                    help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S values to try (default: dlopt's)")
    ap.add_argument("--trainer", action="store_true",
                    help="also run 1 worker with Resources(in_trial=False) (a TorchTrainer)")
    ap.add_argument("--note", default="", help="a line saying what this run compares")
    args = ap.parse_args()

    ref = bare(make_spec(args.epochs, 1))
    rows = [ref]
    refs = {1: ref}  # workers -> the bare baseline a dlopt run of that many workers is compared to
    for w in sorted({w for w in args.workers if w > 1}):
        refs[w] = bare_ddp(make_spec(args.epochs, w), w)
        rows += [refs[w], ray_train_alone(w)]
    print(common.table(rows, ["side", "workers", "total_s", "startup_s", "epoch_s", "val_accuracy"]))
    for poll in args.poll:
        runs = [(w, True) for w in args.workers] + ([(1, False)] if args.trainer else [])
        for w, in_trial in runs:
            row = through_dlopt(make_spec(args.epochs, w, in_trial=in_trial), poll)
            base = refs[w]
            row["ratio"] = row["epoch_s"] / base["epoch_s"]
            row["ratio_vs_1_process"] = row["epoch_s"] / ref["epoch_s"]
            row["trial_startup_extra_s"] = row["startup_s"] - base["startup_s"]
            rows.append(row)
            print(common.table([row], list(row)))
    cols = ["side", "workers", "poll_s", "total_s", "sweep_startup_s", "startup_s", "epoch_s",
            "compute_s", "ratio", "ratio_vs_1_process", "report_s", "report_max_s", "tail_s", "val_accuracy"]
    text = common.table(rows, cols)
    print(text)
    verdicts = []
    for r in rows:
        if not r["side"].startswith("dlopt"):
            continue
        w = r["workers"]
        target = TARGETS[f"trial_startup_{min(w, 2)}"]
        verdicts.append(
            f"- {r['side']}, {w} worker(s), poll {r['poll_s']}: per-epoch ratio {r['ratio']:.2f} (target <= "
            f"{TARGETS['ratio']}); trial start-up {r['startup_s']:.2f} s (target <= {target}); "
            f"report cost {r['report_s'] if r['report_s'] is None else round(r['report_s'], 3)} s "
            f"(target <= {TARGETS['report_s']}); sweep start-up (Ray + MLflow, once per sweep) "
            f"{r['sweep_startup_s']:.2f} s")
    md = (f"{args.note}\n\n" if args.note else "") + \
        f"{args.epochs} epochs, digits, MLP 64-512-10, Adam, batch 64, seed 0. " \
        "startup_s: fitted epoch-0 point after trial start (bare: after the call); epoch_s: " \
        "fitted seconds per epoch from each epoch's end time (stamped in the loop, logged by " \
        "the driver); ratio: epoch_s / the bare baseline with as many processes (1 worker: " \
        "the bare loop; N workers: bare DDP, N spawned processes with gloo, no Ray); " \
        "ratio_vs_1_process: against the 1-process bare loop; report_s: median seconds " \
        "a report blocked the loop; 'Ray TorchTrainer alone': start-up = TorchTrainer.fit() " \
        "call -> its (empty) train function entered, the part of a multi-worker trial's " \
        "start-up that is Ray Train's own; compute_s: median in-loop `epoch_seconds` (train + " \
        "eval, no reporting) - it rises when Ray's own processes take CPU. bare loop: one " \
        "torch thread.\n\n" + text + "\n\n" + "\n".join(verdicts) + "\n"
    common.write("overhead", "Overhead and report cost", {"rows": rows, "args": vars(args)}, md)


if __name__ == "__main__":
    main()
