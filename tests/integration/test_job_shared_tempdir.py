"""The root cause of `ray job submit` failing with FileNotFoundError, kept fixed.

Nodes that share one Ray temp dir (two plain `ray start` on one host) share the unpacked
working_dir of a job; when the job's driver joins the cluster every node installs the job's
runtime_env, and Ray unpacks the working_dir with overwrite: the driver's working directory is
removed and recreated under it. dlopt resolves every location before joining and opens its
store first, so the job still succeeds and its sweep is in the printed durable store.
(dlopt before this fix: `error: FileNotFoundError: [Errno 2] No such file or directory`.)
"""
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from test_job_submit import ROOT, SCRIPT, node_env, ray_job_submit


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("shared-cluster")
    home = tmp_path_factory.mktemp("shared-home")
    up = subprocess.run([sys.executable, str(SCRIPT), "up", str(state_dir), "--workers", "1",
                         "--head-cpus", "2", "--worker-cpus", "2", "--no-mlflow",
                         "--shared-temp-dir"], capture_output=True, text=True, timeout=300,
                        env=node_env(home), cwd=ROOT)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((state_dir / "cluster.json").read_text())
        assert len(set(state["temp_dirs"])) == 1
        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in (state_dir / "env.sh").read_text().splitlines())
        yield home, env
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "down", str(state_dir)], timeout=120)


def test_plain_job_succeeds_when_nodes_share_the_temp_dir(shared_cluster):
    home, env = shared_cluster
    out = ray_job_submit(env, "--working-dir", ".", "--", "dlopt", "run",
                         "tests/integration/specs/submit_plain.py")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "FileNotFoundError" not in text
    uri = f"sqlite:///{home / 'dlopt' / 'mlflow.db'}"
    assert f"at {uri}" in text
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("it-plain-model", "champion")
    assert float(version.tags["metric.test_accuracy"]) > 0.5
