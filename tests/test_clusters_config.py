"""The cluster configs in clusters/ are well-formed, and `dlopt submit` is careful before upload.

- every YAML parses;
- the Ray cluster launcher YAMLs validate against the schema the installed Ray ships
  (ray/autoscaler/ray-schema.json), the same check `ray up` does first;
- the KubeRay manifests carry the fields their CRDs (ray.io/v1) require;
- every node runs a Python that pyproject's `requires-python` accepts (the launcher YAMLs'
  uv-made venv, the KubeRay image's tag) and the Ray that pyproject pins;
- the job's working_dir upload, packaged by Ray's own packager with dlopt's excludes,
  leaves out VCS data, environments, tracking stores and results.
No Ray cluster is started here.
"""
import json
import os
import re
import socket
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
LAUNCHER_YAMLS = sorted((CLUSTERS / "aws").glob("*.yaml")) + sorted((CLUSTERS / "gcp").glob("*.yaml"))
KUBE_YAMLS = sorted((CLUSTERS / "kuberay").glob("*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_parses():
    files = sorted(CLUSTERS.rglob("*.yaml"))
    assert len(files) >= 5, files
    for f in files:
        assert docs(f), f"{f} is empty"


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.parent.name)
def test_launcher_yaml_validates_against_rays_schema(path, ray_schema):
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema)
    # what the README promises: a CPU-only head, a GPU worker group with autoscaling bounds,
    # the project installed, the dashboard not exposed, token auth on
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in workers)
    assert any("dlopt" in cmd and "pip install" in cmd for cmd in config["setup_commands"])
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_launcher_schema_check_is_real(ray_schema):
    broken = yaml.safe_load(LAUNCHER_YAMLS[0].read_text())
    broken["available_node_types"]["head"]["resources"] = {"GPU": "none"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema)


# ------------------------------------------------------------------ Python and Ray versions
def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requires_python():
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(pyproject()["project"]["requires-python"])


def pinned_ray() -> str:
    (pin,) = [d for d in pyproject()["project"]["optional-dependencies"]["run"]
              if d.startswith("ray[")]
    return pin.split("==")[1]


def image_python(config: dict) -> str:
    """The Python of a node's image where its name says it (GCP families `-py310`); the AWS
    Deep Learning Base AMI (Ubuntu 22.04) ships /usr/bin/python3.10."""
    images = [t["node_config"].get("ImageId") or
              t["node_config"]["disks"][0]["initializeParams"]["sourceImage"]
              for t in config["available_node_types"].values()]
    found = {re.search(r"py3(\d+)$", i) for i in images}
    tags = {f"3.{m.group(1)}" for m in found if m}
    return tags.pop() if tags else "3.10"


def node_python(config: dict) -> str:
    """The Python dlopt and Ray run under on a launcher node: the venv the setup commands make
    (`uv venv --python X.Y`) if every Ray command runs from it, else the image's own."""
    made = [m.group(1) for c in config["setup_commands"]
            for m in [re.search(r"uv venv --python (\d+\.\d+)\S* .*?(\S+venv\S*)$", c)] if m]
    ray_cmds = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
                for c in config[key] if re.search(r"\bray (start|stop)\b", c)]
    if made and all("dlopt-venv/bin/ray " in c for c in ray_cmds):
        return made[0]
    return image_python(config)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.parent.name)
def test_launcher_nodes_run_a_python_pyproject_accepts(path):
    config = yaml.safe_load(path.read_text())
    version = node_python(config)
    assert version in requires_python(), (path.name, version, str(requires_python()))
    # the project is installed into that venv, not the image's python3
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert installs and all("--python $HOME/dlopt-venv/bin/python" in c for c in installs)
    assert not any(re.search(r"\bpython3 -m pip\b", c) for c in config["setup_commands"])


def test_python_check_is_real():
    """The same configs with the image's python (what they had before) fail the check."""
    config = yaml.safe_load(LAUNCHER_YAMLS[0].read_text())
    config["head_start_ray_commands"] = ["ray stop", "ray start --head"]
    assert node_python(config) == "3.10" and "3.10" not in requires_python()


def dockerfile_image() -> tuple[str, str]:
    """(Ray version, Python) of the KubeRay Dockerfile's base image."""
    base = re.search(r"^FROM rayproject/ray:(\S+)-py3(\d+)(-\S+)?$",
                     (CLUSTERS / "kuberay" / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile's FROM is not a rayproject/ray:VERSION-py3XX image"
    return base.group(1), f"3.{base.group(2)}"


def test_kuberay_image_python_and_ray_match_pyproject():
    ray_version, python = dockerfile_image()
    assert python in requires_python(), python
    assert ray_version == pinned_ray()
    # every Ray container of the manifests runs the image that Dockerfile builds
    for kind in ("RayCluster", "RayJob"):
        for d in by_kind()[kind]:
            spec = d["spec"] if kind == "RayCluster" else d["spec"]["rayClusterSpec"]
            templates = [spec["headGroupSpec"]["template"]] + [
                g["template"] for g in spec["workerGroupSpecs"]]
            for t in templates:
                for c in t["spec"]["containers"]:
                    assert c["image"].endswith("/dlopt:" + pyproject()["project"]["version"]), c


# Required fields of the KubeRay v1 CRDs (ray-operator/apis/ray/v1/raycluster_types.go: fields
# without `omitempty`) plus what a Pod template needs to be admitted.
def check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head, where
    check_pod_template(head["template"], f"{where}.headGroupSpec")
    groups = spec["workerGroupSpecs"]
    assert groups, where
    for g in groups:
        for field in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert field in g, f"{where}.workerGroupSpecs: {field} missing"
        assert g["minReplicas"] <= g["maxReplicas"]
        check_pod_template(g["template"], f"{where}.workerGroupSpecs[{g['groupName']}]")
    gpu_groups = [g for g in groups if any(
        "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
        for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, f"{where}: no GPU worker group"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth off"


def check_pod_template(template: dict, where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers, where
    for c in containers:
        assert c.get("name") and c.get("image"), where
        assert "resources" in c, f"{where}: container {c['name']} has no resources"


def by_kind() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in KUBE_YAMLS:
        for d in docs(f):
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), f
            out.setdefault(d["kind"], []).append(d)
    return out


def test_kuberay_raycluster_and_rayjob_have_crd_required_fields():
    kinds = by_kind()
    (cluster,) = kinds["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], "RayCluster")
    (job,) = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert "dlopt.cli run" in job["spec"]["entrypoint"]
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"], "RayJob.rayClusterSpec")


def test_mlflow_deployment_and_service_match():
    kinds = by_kind()
    (dep,) = kinds["Deployment"]
    (svc,) = kinds["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    args = " ".join(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "mlflow server" in args and "--backend-store-uri=sqlite:" in args
    assert dep["spec"]["replicas"] == 1  # SQLite: one writer


# ------------------------------------------------------------------ dlopt submit, before upload
def test_upload_excludes_with_rays_packager(tmp_path):
    """Ray's own packager (what JobSubmissionClient runs) with dlopt's excludes."""
    from ray._private.runtime_env.packaging import create_package

    from dlopt.cli.submit import EXCLUDES

    proj = tmp_path / "proj"
    keep = ["platform/dlopt/x.py", "experiments/e.py", "clusters/local/cluster.py",
            "benchmarks/bench.py"]
    drop = [".git/objects/ab", ".venv/lib/big.bin", "mlflow.db", "mlruns/0/meta.yaml",
            "mlartifacts/1/a.bin", "ray_results/sweep/x.json", "platform/dlopt/__pycache__/x.pyc",
            "benchmarks/results/r.json", "platform/dlopt.egg-info/PKG-INFO"]
    for rel in keep + drop:
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text("x")
    out = tmp_path / "pkg.zip"
    create_package(str(proj), out, include_gitignore=False, excludes=list(EXCLUDES))
    names = {n for n in zipfile.ZipFile(out).namelist() if not n.endswith("/")}
    assert names == set(keep)


def test_this_repo_uploads_small(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    from dlopt.cli.submit import EXCLUDES

    out = tmp_path / "pkg.zip"
    create_package(str(ROOT), out, include_gitignore=True, excludes=list(EXCLUDES))
    size = out.stat().st_size
    print(f"working_dir package of this repo: {size / 2**20:.2f} MiB")
    assert size < 20 * 2**20
    names = zipfile.ZipFile(out).namelist()
    assert "platform/dlopt/cli/main.py" in names
    assert not any(n.startswith((".git/", ".venv/")) for n in names)


def test_job_env_carries_mlflow_settings_not_local_stores(monkeypatch):
    from dlopt.cli.submit import SubmitError, entrypoint, job_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
    env = job_env(None)
    assert env == {"PYTHONPATH": "platform", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                   "MLFLOW_TRACKING_TOKEN": "s3cret"}
    assert job_env("https://other:443")["MLFLOW_TRACKING_URI"] == "https://other:443"
    with pytest.raises(SubmitError, match="tracking_uri"):
        job_env("sqlite:///mlflow.db")
    cmd = entrypoint("experiments/x.py", ["optimizer.lr=0.1", "name=a b"], "s3://b/p")
    assert cmd == ("python -m dlopt.cli run experiments/x.py --set optimizer.lr=0.1 "
                   "--set 'name=a b' --storage s3://b/p")
    assert "s3cret" not in cmd and "mlflow:5000" not in cmd


def run_cli(*args, cwd, env=None):
    """The real `dlopt` entry in a fresh process (own copy: `conftest` is ambiguous here)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_submit_invalid_spec_exits_2_before_contacting_the_cluster():
    address = f"http://127.0.0.1:{closed_port()}"
    out = run_cli("submit", "experiments/digits_mlp.py", "--address", address,
                  "--set", "optimizer.lr=-1", cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[0].startswith("optimizer.lr:")
    assert "submit" not in out.stdout  # nothing submitted


def test_submit_checks_address_and_spec_location(tmp_path):
    out = run_cli("submit", "experiments/digits_mlp.py", cwd=ROOT,
                  env={"RAY_ADDRESS": "", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert out.returncode == 2 and out.stderr.startswith("address:"), out.stderr
    spec = tmp_path / "x.py"
    spec.write_text((ROOT / "experiments" / "digits_mlp.py").read_text())
    # an explicit server URI: an earlier in-process sweep may have left a sqlite one in the env
    out = run_cli("submit", str(spec), "--address", f"http://127.0.0.1:{closed_port()}", cwd=ROOT,
                  env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert out.returncode == 2 and out.stderr.startswith("spec:"), out.stderr


def test_submit_unreachable_head_exits_1_without_traceback():
    out = run_cli("submit", "experiments/digits_mlp.py", "--address",
                  f"http://127.0.0.1:{closed_port()}", "--tracking-uri", "http://127.0.0.1:1",
                  cwd=ROOT, env={k: "" for k in ("RAY_AUTH_TOKEN",)})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "submit failed" in out.stderr and "Traceback" not in out.stderr
