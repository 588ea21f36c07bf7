"""Bad input is refused: exit 2, one line naming the field, nothing started, nothing written.

The corpus lives in tests/invalid_specs/: each file says which field its error must name
(`# expect: <line prefix>`, the field path in the one style of every message: dotted, list
indexes in brackets, `model.hidden[1]: ...`; JSON cannot hold comments, so JSON_EXPECT says it for them).
Files under invalid_specs/run/ are valid specs that `dlopt run` must still refuse before
Ray starts (dlopt.preflight): a trial that no cluster dlopt would start can place, and a
distillation teacher missing from the registry.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dlopt import cli
from dlopt.spec import Experiment

CORPUS = Path(__file__).parent / "invalid_specs"
SPEC_FILES = sorted(p for p in CORPUS.iterdir() if p.is_file())
RUN_FILES = sorted((CORPUS / "run").iterdir())
JSON_EXPECT = {"40_unknown_field.json": "optimizer.learning_rate",
               "41_wrong_type.json": "resources.use_gpu"}


def expected_prefix(path: Path) -> str:
    if path.name in JSON_EXPECT:
        return JSON_EXPECT[path.name]
    m = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert m, f"{path.name} says nothing about the field it must name"
    return m.group(1).strip()


def _children(pid: int) -> set[int]:
    """Live child processes of `pid` (a started Ray would leave raylet/gcs here)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def test_corpus_is_large_enough():
    assert len(SPEC_FILES) + len(RUN_FILES) >= 30


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_refused_in_process(path, command, tmp_path, monkeypatch, capsys):
    """Every corpus file, through each command: exit 2, the field named, no file, no process."""
    spec = tmp_path / path.name
    shutil.copy(path, spec)
    monkeypatch.chdir(tmp_path)
    before = _children(os.getpid())
    with pytest.raises(SystemExit) as exc:
        cli.main([command, str(spec)])
    assert exc.value.code == 2
    err = [line.replace(f"{tmp_path}/", "") for line in capsys.readouterr().err.strip().splitlines()]
    prefix = expected_prefix(path)
    assert any(line.startswith(prefix) for line in err), (prefix, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written
    assert _children(os.getpid()) <= before  # nothing started
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


# A fresh process per file: its exit status, and afterwards no child it left behind and no
# Ray session directory under its TMPDIR.
WRAPPER = """
import json, os, sys
from pathlib import Path
from dlopt.cli.main import main
sys.argv = ["dlopt", *sys.argv[1:]]
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
def children(pid):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass
    return out
ray_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
print(json.dumps({"code": code, "children": children(os.getpid()), "ray_up": ray_up}))
"""


def _run_refused(path: Path, tmp_path: Path, extra=()):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    shutil.copy(path, work / path.name)
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-c", WRAPPER, "run", path.name, *extra], cwd=work,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == {"code": 2, "children": [], "ray_up": False}, (status, out.stderr)
    prefix = expected_prefix(path)
    assert any(line.startswith(prefix) for line in out.stderr.splitlines()), (prefix, out.stderr)
    assert sorted(p.name for p in work.iterdir()) == [path.name]  # no mlflow.db, no ray_results
    assert not any(tmp.rglob("session_*"))  # no Ray session was created
    return out


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_run_refuses_before_ray_starts(path, tmp_path):
    _run_refused(path, tmp_path)


@pytest.mark.parametrize("name", ["13_empty_grid.yaml", "17_pbt_without_mutations.yaml",
                                  "40_unknown_field.json"])
def test_run_refuses_in_a_fresh_process(name, tmp_path):
    _run_refused(CORPUS / name, tmp_path)


def test_local_capacity_is_what_dlopt_would_start():
    """The cap the refusal uses matches what sweep.init_ray would give Ray locally."""
    from dlopt.driver import preflight
    from dlopt.spec.plan import make_plan
    from dlopt.spec import Resources
    from dlopt.driver.sweep import local_cpus_needed

    cap = preflight.local_capacity()["CPU"]
    fits = Experiment(name="fits", resources=Resources(num_workers=int(cap)))
    assert preflight.placement_problems(fits, preflight.local_capacity(), "here") == []
    assert local_cpus_needed(make_plan(fits)) >= cap
    too_big = Experiment(name="big", resources=Resources(num_workers=int(cap) + 1))
    assert preflight.placement_problems(too_big, preflight.local_capacity(), "here")


# ------------------------------------------------------------------ JSON round trip (hypothesis)
finite = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=0.95, allow_nan=False)


@st.composite
def specs(draw):
    from dlopt import tune
    from dlopt.spec import (ACTIVATIONS, INITS, OPTIMIZERS, Data, Model, Optimizer, Prune,
                            Quantize, Regularization, Resources, Search)

    lr = draw(st.one_of(finite, st.builds(lambda a, b: tune.loguniform(a, a + b), finite, finite),
                        st.lists(finite, min_size=1, max_size=4).map(tune.choice)))
    epochs = draw(st.integers(2, 50))
    compression = []
    if draw(st.booleans()):
        compression.append(Prune(sparsity=draw(unit), start_epoch=0, end_epoch=1))
    if draw(st.booleans()):
        compression.append(Quantize())
    return Experiment(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)),
        seed=draw(st.integers(0, 2**31)),
        epochs=epochs,
        data=Data(batch_size=draw(st.integers(1, 512)),
                  val_fraction=draw(st.floats(0.05, 0.4)), test_fraction=draw(st.floats(0, 0.4))),
        model=Model(hidden=draw(st.lists(st.integers(1, 512), max_size=4)),
                    activation=draw(st.sampled_from(ACTIVATIONS)),
                    init=draw(st.sampled_from(INITS)), dropout=draw(unit)),
        optimizer=Optimizer(name=draw(st.sampled_from([o for o in OPTIMIZERS if o != "gd"])), lr=lr,
                            weight_decay=draw(st.floats(0, 1))),
        regularization=Regularization(l2=draw(st.floats(0, 1)),
                                      grad_clip_norm=draw(st.one_of(st.none(), finite))),
        compression=compression,
        search=Search(num_samples=draw(st.integers(1, 20)), seed=draw(st.one_of(st.none(),
                                                                              st.integers(0, 99)))),
        resources=Resources(num_workers=draw(st.integers(1, 8)), max_failures=draw(st.integers(-1, 5))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_spec_json_round_trip(spec):
    """dump -> JSON text -> validate gives the same spec, the same JSON and the same hash."""
    text = json.dumps(spec.model_dump(mode="json"))
    again = Experiment.model_validate(json.loads(text))
    assert again == spec
    assert again.model_dump(mode="json") == spec.model_dump(mode="json")
    assert again.spec_hash() == spec.spec_hash()
    assert Experiment.model_validate_json(spec.model_dump_json()) == spec


def test_teacher_lookup_in_an_existing_registry(tmp_path):
    """A store that exists: a missing alias or version is refused, an existing one passes."""
    from mlflow.tracking import MlflowClient

    from dlopt.driver import preflight
    from dlopt.spec import Distill

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("teacher")
    version = client.create_model_version("teacher", source=str(tmp_path), run_id=None)
    client.set_registered_model_alias("teacher", "champion", version.version)

    def problems(teacher):
        spec = Experiment(name="t", compression=[Distill(teacher=teacher)])
        return preflight.teacher_problems(spec, uri)

    assert problems("models:/teacher@champion") == []
    assert problems(f"models:/teacher/{version.version}") == []
    assert problems("models:/teacher@nope")[0].startswith("compression[0].teacher:")
    assert problems("models:/teacher/99")[0].startswith("compression[0].teacher:")
    assert problems("models:/other@champion")[0].startswith("compression[0].teacher:")
