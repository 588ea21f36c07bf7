"""`dlopt submit` to a real local multi-node Ray cluster with token auth and a real MLflow server.

The cluster (head + 1 worker node, 2 CPUs each) and the `mlflow server` (SQLite backend,
local artifact root) come from clusters/local/cluster.py, the script users run, and are
stopped after. The spec asks for 2 DDP workers with placement "spread": its ranks must
report two different Ray node ids.
"""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "clusters" / "local" / "cluster.py"
SPEC = "tests/integration/specs/submit_spread.py"
VENV_BIN = Path(sys.executable).parent


def node_env(home) -> dict:
    """The environment `ray start` (so every job) gets: this process's, with HOME set and no
    MLflow settings, as on a cluster where nobody exported any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    return {**env, "HOME": str(home)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("cluster")
    # the nodes' (and so the jobs') home: where a job without tracking settings keeps its sweep
    home = tmp_path_factory.mktemp("home")
    up = subprocess.run([sys.executable, str(SCRIPT), "up", str(state_dir), "--workers", "1",
                         "--head-cpus", "2", "--worker-cpus", "2"],
                        capture_output=True, text=True, timeout=300,
                        env=node_env(home))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((state_dir / "cluster.json").read_text())
        state["home"] = str(home)
        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in (state_dir / "env.sh").read_text().splitlines())
        yield state, env
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "down", str(state_dir)], timeout=120)
        alive = [pid for pid in json.loads((state_dir / "cluster.json").read_text())["pids"]]
        assert alive == []  # `down` ended every process it started


def run_cli(*args, env: dict, timeout: float = 120):
    """`dlopt` in a fresh process from the project root (the directory the job uploads)."""
    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def api(state: dict, path: str) -> dict:
    token = open(state["token_path"]).read().strip()
    req = urllib.request.Request(state["dashboard"] + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def node_ids(state: dict) -> set[str]:
    rows = api(state, "/api/v0/nodes?limit=100")["data"]["result"]["result"]
    return {r["node_id"] for r in rows if r["state"] == "ALIVE"}


def jobs(state: dict) -> list[dict]:
    return api(state, "/api/jobs/")


def test_cluster_has_two_nodes_and_requires_the_token(cluster):
    state, _ = cluster
    assert len(node_ids(state)) == 2
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(state["dashboard"] + "/api/jobs/", timeout=10)
    assert err.value.code == 401


def test_invalid_spec_exits_2_and_submits_nothing(cluster):
    state, env = cluster
    before = len(jobs(state))
    out = run_cli("submit", SPEC, "--set", "resources.placement=diagonal", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("resources.placement:")
    assert len(jobs(state)) == before


def test_failed_job_exits_nonzero(cluster):
    state, env = cluster
    # valid spec, but the job's MLflow server is unreachable: `dlopt run` fails inside the job
    out = run_cli("submit", SPEC, "--tracking-uri", "http://127.0.0.1:9", env=env,
                  timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    job_id = out.stdout.split("submitted job ", 1)[1].split()[0]
    assert f"job {job_id} FAILED" in out.stdout
    assert {j["submission_id"]: j["status"] for j in jobs(state)}[job_id] == "FAILED"


def test_submit_runs_ddp_across_two_nodes_and_tracks_to_the_server(cluster):
    state, env = cluster
    secret = "tok-should-not-leak-42"  # forwarded to the job, never printed
    out = run_cli("submit", SPEC, env={**env, "MLFLOW_TRACKING_TOKEN": secret},
                  timeout=400)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    job_id = out.stdout.split("submitted job ", 1)[1].split()[0]
    assert job_id.startswith("raysubmit_") and f"job {job_id} SUCCEEDED" in out.stdout
    assert secret not in text
    assert open(state["token_path"]).read().strip() not in text
    (job,) = [j for j in jobs(state) if j["submission_id"] == job_id]
    assert job["runtime_env"]["working_dir"].startswith("gcs://")  # uploaded, not a local path

    client = MlflowClient(state["mlflow"])
    (exp,) = [e for e in client.search_experiments() if e.name == "it-submit"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dlopt.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dlopt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 1
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert child.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    # the two DDP ranks ran on the cluster's two different nodes
    ranks = child.data.tags["dlopt.worker_nodes"].split(",")
    print(f"DDP rank -> Ray node: {ranks}")
    assert len(ranks) == 2 and len(set(ranks)) == 2
    assert set(ranks) == node_ids(state)  # the job used this cluster, which is still up
    assert child.data.metrics["num_nodes"] == 2
    assert child.data.metrics["val_accuracy"] > 0.5
    version = client.get_model_version_by_alias("it-submit-model", "champion")
    assert version.tags["dlopt.source_run"] == child.info.run_id


def ray_job_submit(env: dict, *args: str, timeout: float = 500):
    """The real `ray` CLI as a Ray user types it, from the project root: no tracking URI."""
    client = {**os.environ, **env, "PATH": str(VENV_BIN) + os.pathsep + os.environ.get("PATH", "")}
    client.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(VENV_BIN / "ray"), "job", "submit", *args], cwd=ROOT, env=client,
                          capture_output=True, text=True, timeout=timeout)


def test_plain_ray_job_submit_keeps_the_sweep_after_the_job(cluster):
    """`ray job submit --working-dir . -- dlopt run SPEC` with no MLflow settings: the job's
    working directory is Ray's temporary copy, so the store and Ray storage go to the job
    user's home (~/dlopt/mlflow.db, ~/ray_results); the summary names the store, which holds
    the whole sweep after the job has ended."""
    state, env = cluster
    out = ray_job_submit(env, "--working-dir", ".", "--", "dlopt", "run", "tests/integration/specs/submit_plain.py")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "succeeded" in text.lower()
    home = Path(state["home"])
    line = next(line for line in text.splitlines() if line.startswith("MLflow parent run "))
    uri = line.rsplit(" at ", 1)[1].strip()
    assert uri == f"sqlite:///{home / 'dlopt' / 'mlflow.db'}", line
    assert f"dlopt ui --backend-store-uri {uri}" in text  # read from outside the job
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "it-plain"]
    assert exp.artifact_location.startswith(str(home / "dlopt" / "mlruns"))
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dlopt.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dlopt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 1
    assert parents[0].info.status == "FINISHED" and children[0].info.status == "FINISHED"
    assert len(set(children[0].data.tags["dlopt.worker_nodes"].split(","))) == 2
    version = client.get_model_version_by_alias("it-plain-model", "champion")
    assert float(version.tags["metric.test_accuracy"]) > 0.5
    import mlflow

    mlflow.set_tracking_uri(uri)  # the model's files outlive the job
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/it-plain-model@champion"))
    assert (local / "artifacts" / "model_dir" / "meta.json").exists()
    assert any((home / "ray_results").glob("it-plain-*"))


def test_plain_job_with_an_unwritable_home_says_which_flags_to_pass(cluster):
    _, env = cluster
    out = ray_job_submit(env, "--working-dir", ".", "--runtime-env-json",
                         json.dumps({"env_vars": {"HOME": "/proc/dlopt-no-home"}}),
                         "--", "dlopt", "run", "tests/integration/specs/submit_plain.py", timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    # one line from dlopt (`ray job submit` shows the job's log, and again its tail on failure)
    (line,) = {line for line in text.splitlines() if line.startswith("error: cannot write")}
    assert "--tracking-uri" in line and "--storage" in line
    assert "Traceback" not in text
