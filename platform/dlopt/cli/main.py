"""`dlopt` console script: validate, plan, run, submit, evaluate, schema, ui.

Validation errors print one line per problem naming the field path and exit 2,
before Ray or MLflow are imported: each command imports the layers it needs inside itself
(deferred on purpose: `dlopt validate` loads neither Ray, MLflow nor torch). The CLI owns
the terminal (docs/architecture.md, "Logging and the terminal"): it prints, sets up
logging, silences Ray and MLflow unless --verbose, and turns exceptions into exit codes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from dlopt.cli.common import EXIT_INVALID, configure_logging, load_spec
from dlopt.cli.submit import add_parser as add_submit_parser


def dlopt_version() -> str:
    try:
        return version("dlopt")
    except PackageNotFoundError:  # run from a source tree (PYTHONPATH=platform), not installed
        return "unknown (not installed)"


def cmd_validate(args) -> int:
    from dlopt.spec.checks import search_warnings

    spec = load_spec(args)
    for line in search_warnings(spec.search):  # valid, but not what the user likely meant
        print(f"warning: {line}", file=sys.stderr)
    print("ok")
    return 0


def cmd_plan(args) -> int:
    from dlopt.spec.extend import extending
    from dlopt.spec.load import SpecError
    from dlopt.spec.plan import make_plan

    plan = make_plan(load_spec(args), cluster_cpus=args.cpus, cluster_gpus=args.gpus)
    if args.extend is not None:
        try:
            plan = extending(plan, args.extend)
        except SpecError as err:
            print("\n".join(err.lines), file=sys.stderr)
            return EXIT_INVALID
    print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.describe())
    return 0


def cmd_schema(args) -> int:
    from dlopt.spec import Experiment

    print(json.dumps(Experiment.model_json_schema(), indent=1))
    return 0


def cmd_run(args) -> int:
    spec = load_spec(args)
    from dlopt.driver import environment
    from dlopt.driver.sweep import run
    from dlopt.spec.load import SpecError
    from dlopt.tracking.store import SweepFinished
    from dlopt.tracking.uris import LocationError, TrackingUnreachable

    quiet = not args.verbose
    # Ray's and MLflow's settings stay for the whole command (the summary reads MLflow too);
    # dlopt.run() from Python sets them only while the sweep runs.
    environment.apply(os.environ, quiet)
    try:
        result = run(spec, address=args.address, tracking_uri=args.tracking_uri,
                     storage=args.storage, resume=args.resume, verbose=args.verbose, quiet=quiet,
                     progress=sys.stdout, source_file=args.spec, extend=args.extend)
    except TrackingUnreachable as err:  # before Ray starts; one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    except LocationError as err:  # a default location cannot be written (before Ray starts)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except SpecError as err:  # preflight: the run could never succeed (before Ray starts)
        for line in err.lines:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    except SweepFinished as done:  # --resume of a finished sweep: nothing to do
        print(done, file=sys.stderr)
        return 0
    except Exception as err:  # noqa: BLE001 - one clear line, with credentials scrubbed
        from dlopt.tracking.scrub import scrub

        if args.verbose:
            import traceback

            print(scrub(traceback.format_exc()), file=sys.stderr)
        print(f"error: {scrub(f'{type(err).__name__}: {err}')}", file=sys.stderr)
        return 1
    print_summary(result)
    return 0 if result.best is not None else 1


def print_summary(result) -> None:
    from dlopt.tracking.uris import redact_uri

    plan = result.plan
    ok = sum(t.status == "ok" for t in result.trials)
    print(f"\nsweep {plan.sweep_name}: {ok}/{len(result.trials)} trials ok in "
          f"{result.wall_seconds:.0f} s")
    if plan.extend:
        print(f"extended: {plan.extend} trials added to sweep {plan.sweep_name} "
              f"({len(result.trials)} in all; Tune run directory {plan.tune_name})")
    if result.stop_reason:
        print(f"stopped: {result.stop_reason}")
    metric = plan.headline[0]
    best = result.best
    if best is None:
        print("no healthy trial finished; see the MLflow runs for errors")
    else:
        shown = {k: best.metrics[k] for k in ("val_accuracy", "val_loss", "train_loss",
                                               "compressed_val_accuracy", "model_bytes",
                                               "compression_ratio") if k in best.metrics}
        from dlopt.driver.publish import run_name
        from dlopt.driver.tables import fmt

        name = run_name(result.tracking_uri, best.run_id) or best.trial_id
        print(f"best trial {name} ({metric} = {best.metrics.get(metric):.4g})")
        print("  config  " + (", ".join(f"{k}={v}" for k, v in best.config.items()) or "(no domains)"))
        print("  metrics " + ", ".join(f"{k}={fmt(v)}" for k, v in shown.items()))
    for reg in result.registered:  # by alias, or by version where it has none (Pareto)
        print(f"registered {reg.uri} (version {reg.version})")
        if reg.test_metrics:  # the withheld test split, measured after selection
            print("  test    " + ", ".join(f"{k}={v:.4g}" for k, v in reg.test_metrics.items()))
    uri = redact_uri(result.tracking_uri)
    print(f"MLflow parent run {result.parent_run_id} (experiment {result.experiment_id}) at {uri}")
    from dlopt.driver.description import UI_QUERY
    from dlopt.tracking.uris import default_tracking_uri, in_ray_job

    route = f"#/experiments/{result.experiment_id}/runs/{result.parent_run_id}{UI_QUERY}"
    if uri.startswith(("http://", "https://")):
        print(f"open the UI: {uri.rstrip('/')}/{route}")
    else:  # a local store: `dlopt ui` serves it (a job's store: named, read from elsewhere)
        store = ("" if uri == default_tracking_uri() and not in_ray_job()
                 else f" --backend-store-uri {uri}")
        print(f"open the UI: dlopt ui{store}   then http://127.0.0.1:5000/{route}")


def cmd_evaluate(args) -> int:
    """A registered model on its test split (or --data): the metrics the final report logged."""
    import mlflow

    from dlopt.registry.evaluation import EvaluationError, evaluate_uri
    from dlopt.tracking.scrub import scrub
    from dlopt.tracking.uris import default_tracking_uri

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    from mlflow.exceptions import MlflowException

    try:
        report = evaluate_uri(args.model, args.data)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except MlflowException as err:  # no such model, alias or version
        print(f"error: {args.model}: {scrub(err.message)}", file=sys.stderr)  # URL credentials
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0
    print(f"{args.model} on {report.data}")
    print("\n".join(report.lines()))
    if report.confusion is not None:
        print("confusion matrix (rows = true class, columns = predicted):")
        for row in report.confusion.tolist():
            print("  " + " ".join(f"{v:4d}" for v in row))
    return 0


def cmd_ui(args) -> int:
    from dlopt.driver.description import UI_QUERY
    from dlopt.tracking.uris import default_tracking_uri, durable_home, sqlite_path

    uri = args.backend_store_uri or default_tracking_uri()
    job_store = durable_home() / "mlflow.db"
    db = sqlite_path(uri)
    if (not args.backend_store_uri and db is not None and not db.exists()
            and job_store.exists()):
        uri = f"sqlite:///{job_store}"  # no store here: the one `ray job submit` runs wrote
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}/#/experiments{UI_QUERY}",
          flush=True)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port),
                               "--workers", str(args.workers)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlopt", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {dlopt_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_cmd(name, helptext):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("spec", help="experiment file: .py defining `experiment`, or .yaml/.json")
        s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a field, e.g. --set optimizer.lr=0.01 (repeatable)")
        return s

    s = spec_cmd("validate", "check a spec; exit 2 with one line per problem")
    s.set_defaults(fn=cmd_validate)
    s = spec_cmd("plan", "show what a run would do; starts nothing")
    s.add_argument("--json", action="store_true")
    s.add_argument("--cpus", type=float, default=None, help="cluster CPUs to plan for")
    s.add_argument("--gpus", type=float, default=None,
                   help="cluster GPUs to plan for (default: not counted; `dlopt run` counts them)")
    s.add_argument("--extend", type=int, default=None, metavar="N",
                   help="show what `dlopt run --extend N` would do")
    s.set_defaults(fn=cmd_plan)
    s = spec_cmd("run", "run the sweep")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db; "
                        "inside a Ray job ~/dlopt/mlflow.db)")
    s.add_argument("--storage", default=None, help="Ray storage path or URI (default "
                   "./ray_results; inside a Ray job ~/ray_results)")
    s.add_argument("--resume", action="store_true", help="continue the latest sweep of this "
                   "experiment (its latest extension, where one was interrupted)")
    s.add_argument("--extend", type=int, default=None, metavar="N",
                   help="add N trials to the latest sweep of this experiment (finished or "
                   "killed), under its MLflow parent run; the sampler learns every earlier trial")
    s.add_argument("--verbose", action="store_true",
                   help="show Ray's and MLflow's own logs and warnings, and dlopt's debug lines")
    s.set_defaults(fn=cmd_run)
    add_submit_parser(sub)  # `dlopt submit SPEC --address http://HEAD:8265` (Ray job SDK)
    s = sub.add_parser("schema", help="JSON schema of Experiment")
    s.set_defaults(fn=cmd_schema)
    s = sub.add_parser("evaluate", help="evaluate a registered model on its test split")
    s.add_argument("model", help="model URI, e.g. models:/NAME@ALIAS or models:/NAME/VERSION")
    s.add_argument("--data", default=None,
                   help="a spec file (its data and seed) or a dataset name; default: the model's own")
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(fn=cmd_evaluate)
    s = sub.add_parser("ui", help="MLflow UI on the local store")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--backend-store-uri", default=None,
                   help="default: ./mlflow.db, else ~/dlopt/mlflow.db (the store of `ray job submit` runs)")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes (MLflow's default of 4 is for shared servers)")
    s.set_defaults(fn=cmd_ui)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    return args.fn(args) or 0


def console() -> None:
    """The `dlopt` command: `main`, then a fast exit.

    Once a command has returned, everything it wrote is closed (the MLflow writer drained,
    Ray shut down), yet tearing down an interpreter that holds torch, MLflow and Ray takes
    ~2 s on a 2-core machine (measured: 0.02 s of atexit handlers, the rest module and
    object finalization), a third of a 1-trial run's time after its last epoch. So the
    exit handlers run, the streams are flushed, and the process ends without the teardown.
    Threads left are not joined: the command waited for its own work, and what is left are
    idle pools (MLflow's artifact uploader, which only ends from the teardown itself: joining
    it hung `dlopt run` against an HTTP server). An exception still propagates the ordinary
    way (traceback, normal exit)."""
    import atexit

    try:
        code = main()
    except SystemExit as done:  # argparse and a command's own exit: same codes, same text
        code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # CPython has no public way to run atexit handlers without the teardown; these are
    # logging.shutdown, MLflow's end of an active run, Ray's shutdown and the like
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)

