"""The CLI contract: exit codes, field-path errors, and nothing started on bad input."""
import json
import subprocess
import sys

from dlopt_testing import run_cli


def test_validate_ok(root):
    out = run_cli("validate", str(root / "experiments" / "digits_mlp.py"))
    assert out.returncode == 0 and out.stdout.strip() == "ok"


def test_validate_negative_lr_exits_2_naming_the_field(tmp_path, root):
    out = run_cli("validate", str(root / "experiments" / "digits_mlp.py"), "--set", "optimizer.lr=-1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["optimizer.lr: Input should be greater than 0"]
    bad = tmp_path / "bad.py"
    bad.write_text("from dlopt import *\nexperiment = Experiment(name='b', optimizer=Optimizer(lr=-1))\n")
    out = run_cli("validate", str(bad))
    assert out.returncode == 2 and out.stderr.startswith("optimizer.lr:")


def test_invalid_spec_starts_neither_ray_nor_mlflow(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\noptimizer: {lr: -1, nme: sgd}\n")
    code = (
        "import sys\nfrom dlopt.cli import main\n"
        f"try:\n    main(['run', {str(bad)!r}])\nexcept SystemExit as e:\n    rc = e.code\n"
        "print(rc, 'ray' in sys.modules, 'mlflow' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False", "False", "False"], out.stderr
    assert sorted(out.stderr.strip().splitlines()) == [
        "optimizer.lr: Input should be greater than 0", "optimizer.nme: Extra inputs are not permitted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_plan_json_counts_grid(root):
    out = run_cli("plan", str(root / "experiments" / "digits_mlp.py"), "--json")
    plan = json.loads(out.stdout)
    assert plan["trials"] == 4 and plan["grid_points"] == 4
    assert plan["resources_per_trial"] == {"CPU": 2.0}
    assert set(plan["domains"]) == {"optimizer.name", "optimizer.lr"}


def test_schema_is_json_schema():
    out = run_cli("schema")
    schema = json.loads(out.stdout)
    assert {"optimizer", "compression", "search"} <= set(schema["properties"])


def test_version_from_the_installed_package():
    from importlib.metadata import version

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"dlopt {version('dlopt')}"


def test_python_m_dlopt_is_the_console_script(root):
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "dlopt", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"dlopt {version('dlopt')}"
    out = subprocess.run([sys.executable, "-m", "dlopt", "validate",
                          str(root / "experiments" / "digits_mlp.py")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok"


def test_summary_prints_each_registered_version_by_alias_or_by_version(capsys):
    """A Pareto version without an alias is printed by version, never `models:/NAME@None`."""
    from types import SimpleNamespace

    from dlopt import Experiment
    from dlopt.cli.main import print_summary
    from dlopt.registry.versions import RegisteredModel
    from dlopt.spec.plan import make_plan

    registered = [RegisteredModel(name="m", version="1", alias="most-accurate", run_id="r1",
                                  trial_id="t1", test_metrics={"test_accuracy": 0.9}),
                  RegisteredModel(name="m", version="2", alias=None, run_id="r2", trial_id="t2")]
    result = SimpleNamespace(plan=make_plan(Experiment(name="s")), trials=[], wall_seconds=1.0,
                             best=None, registered=registered, tracking_uri="sqlite:///m.db",
                             parent_run_id="p", experiment_id="1", stop_reason="")
    print_summary(result)
    out = capsys.readouterr().out
    assert "registered models:/m@most-accurate (version 1)\n  test    test_accuracy=0.9\n" in out
    assert "registered models:/m/2 (version 2)\n" in out and "@None" not in out
