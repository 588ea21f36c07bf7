"""`dlopt submit`: run a spec on a Ray cluster as a Ray job (Ray's job SDK, not a new protocol).

The job is `python -m dlopt.cli run SPEC` on the cluster's head node, with this directory as
the job's working_dir. Choices, and why:
- The spec is validated here first: an invalid spec exits 2 before anything is uploaded.
- dlopt is imported from the uploaded source (`PYTHONPATH=platform`, relative to the job's
  working_dir, which is also the cwd of every Ray worker of the job), so the code that runs is
  the code that was submitted, whether or not the cluster image has dlopt installed.
- MLflow settings travel in the job's runtime_env env_vars (MLFLOW_TRACKING_URI and, when set
  here, MLflow's credential variables), never on the entrypoint command line, which Ray shows
  in logs and in `ray job list`. URIs are printed with credentials removed.
- Ray's token auth: the client needs RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN,
  RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). When a token is available and RAY_AUTH_MODE is
  unset, token mode is switched on for this process, as `ray.init` does for a driver.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from dlopt.cli.common import EXIT_INVALID, load_spec
from dlopt.tracking.uris import redact_uri

# What never goes into the working_dir upload: VCS data, environments, local tracking stores,
# Ray results and caches. Ray also honours .gitignore; these hold even without one.
EXCLUDES = [".git", ".venv", "venv", "mlflow.db", "mlruns", "mlartifacts", "ray_results",
            "__pycache__", "*.pyc", "benchmarks/results", ".pytest_cache", "*.egg-info"]
# MLflow's client settings that may carry credentials: forwarded to the job, never printed.
MLFLOW_FORWARD = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(Exception):
    """A problem found before upload; each line names what is wrong."""


def entrypoint(spec_rel: str, sets: list[str], storage: Optional[str]) -> str:
    args = ["python", "-m", "dlopt.cli", "run", spec_rel]
    for item in sets:
        args += ["--set", item]
    if storage:
        args += ["--storage", storage]
    return " ".join(shlex.quote(a) for a in args)


def relative_spec(spec: str, working_dir: Path) -> str:
    path = Path(spec).resolve()
    try:
        return path.relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise SubmitError(f"spec: {spec} is outside the working directory {working_dir}, "
                          "which is what the job uploads; run dlopt submit from the project root"
                          ) from None


def job_env(tracking_uri: Optional[str]) -> dict[str, str]:
    env = {"PYTHONPATH": "platform"}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if not uri.startswith(("http://", "https://", "databricks")):
            raise SubmitError(f"tracking_uri: {uri} is local to this machine; a job needs an MLflow "
                              "server (http://...) or it would track into the job's temporary "
                              "working_dir")
        env["MLFLOW_TRACKING_URI"] = uri
    env.update({k: os.environ[k] for k in MLFLOW_FORWARD if k in os.environ})
    return env


def runtime_env(tracking_uri: Optional[str]) -> dict:
    return {"working_dir": ".", "excludes": list(EXCLUDES), "env_vars": job_env(tracking_uri)}


def enable_token_auth_if_available() -> None:
    """Must run before Ray is imported: Ray reads RAY_AUTH_MODE once, at import."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def follow(client, job_id: str) -> str:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    while True:  # the log stream closes a moment before the status turns terminal
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)


def submit(spec, spec_path: str, *, address: str, sets: list[str], tracking_uri: Optional[str],
           storage: Optional[str], wait: bool = True) -> int:
    """`spec` is the validated Experiment; returns the process exit code."""
    env = runtime_env(tracking_uri)
    command = entrypoint(relative_spec(spec_path, Path.cwd()), sets, storage)
    enable_token_auth_if_available()
    # deferred on purpose: Ray reads RAY_AUTH_MODE (set just above) once, at import
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=command, runtime_env=env,
                                   metadata={"dlopt.experiment": spec.name})
    except Exception as err:  # noqa: BLE001 - unreachable head, refused token: Ray's message says which
        print(f"submit failed: {err}", file=sys.stderr)
        return 1
    uri = env["env_vars"].get("MLFLOW_TRACKING_URI")
    print(f"submitted job {job_id} to {address}: {command}")
    print(f"tracking: {redact_uri(uri) if uri else 'none (the job keeps its own sqlite store)'}",
          flush=True)
    if not wait:
        print(f"follow: ray job logs --follow --address {address} {job_id}")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running "
              f"(ray job stop --address {address} {job_id})", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - head went away mid-job: the log stream or status call fails
        print(f"lost job {job_id}: {err}", file=sys.stderr)
        return 1
    print(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_submit(args) -> int:
    spec = load_spec(args)  # exits 2 on an invalid spec, before anything is uploaded
    address = args.address or os.environ.get("RAY_ADDRESS", "")
    try:
        if not address.startswith(("http://", "https://")):
            raise SubmitError("address: the Ray job API of the head node is needed, "
                              "e.g. --address http://127.0.0.1:8265 (or RAY_ADDRESS)")
        return submit(spec, args.spec, address=address, sets=args.set or [],
                      tracking_uri=args.tracking_uri, storage=args.storage, wait=not args.no_wait)
    except SubmitError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID


def add_parser(sub) -> None:
    s = sub.add_parser("submit", help="run the sweep on a Ray cluster as a Ray job")
    s.add_argument("spec", help="experiment file inside the current directory (it is uploaded)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a field, e.g. --set optimizer.lr=0.01 (repeatable)")
    s.add_argument("--address", default=None,
                   help="Ray job API of the head, http://HEAD:8265 (default: RAY_ADDRESS)")
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow server for the job (default: MLFLOW_TRACKING_URI)")
    s.add_argument("--storage", default=None,
                   help="Ray storage the nodes share, e.g. s3://bucket/path or an NFS path")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return")
    s.set_defaults(fn=cmd_submit)
